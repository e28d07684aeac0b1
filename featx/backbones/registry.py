"""The backbone registry: every ``keras.applications`` image model as a frozen record.

A backbone is data (constructor, native input size, preprocessing, pooled
feature width, how its layers group into named blocks); building it lives in
:mod:`featx.backbones`, which re-exports these names.

Examples
--------
>>> from featx.backbones.registry import get_backbone, list_backbones
>>> get_backbone("resnet50").feature_width
2048
>>> [b.name for b in list_backbones("efficientnetv2*")][:2]
['efficientnetv2b0', 'efficientnetv2b1']
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UnknownBackbone

@dataclass(frozen=True)
class Family:
    """What every member of a model family shares."""

    module: str  # keras.applications.<module>, where preprocess_input lives
    preprocessing: str  # one of PREPROCESSING_MODES
    block_pattern: str  # regex; its first group names the block a layer belongs to
    block_template: str = r"\1"
    min_input_size: int = 32
    fixed_imagenet_size: bool = False  # NASNet's ImageNet weights need the native size
    # Where blocks end, for families whose cells read more than the previous
    # cell (NASNet) and so have no single-layer cut points between them.
    block_end_pattern: str | None = None


@dataclass(frozen=True)
class Backbone:
    """A registry record: everything featx needs to know about one backbone.

    Attributes
    ----------
    name : str
        Registry name, lower case (``"resnet50"``).
    constructor : str
        Attribute of ``keras.applications`` that builds it (``"ResNet50"``).
    input_size : int
        Native (ImageNet) square input size in pixels.
    feature_width : int
        Width of the pooled feature vector of the full backbone.
    params : int
        Parameters of the headless backbone.
    family : Family
        Preprocessing mode and block structure shared by the family.
    """

    name: str
    constructor: str
    input_size: int
    feature_width: int
    params: int
    family: Family = field(repr=False)

    @property
    def preprocessing(self) -> str:
        return self.family.preprocessing

    @property
    def module(self) -> str:
        return self.family.module

    @property
    def min_input_size(self) -> int:
        return self.family.min_input_size

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "constructor": f"keras.applications.{self.constructor}",
            "input_size": self.input_size,
            "feature_width": self.feature_width,
            "params": self.params,
            "preprocessing": self.preprocessing,
            "preprocess_input": f"keras.applications.{self.module}.preprocess_input",
        }


_RESNET = Family("resnet", "caffe", r"^(conv\d_block\d+)_")
_RESNET_V2 = Family("resnet_v2", "tf", r"^(conv\d_block\d+)_")
_INCEPTION_V3 = Family("inception_v3", "tf", r"^(mixed\d+)", min_input_size=75)
_INCEPTION_RESNET_V2 = Family(
    "inception_resnet_v2", "tf", r"^(block\d+_\d+|mixed_\d[a-z]|conv_7b)", min_input_size=75
)
_VGG16 = Family("vgg16", "caffe", r"^(block\d)_")
_VGG19 = Family("vgg19", "caffe", r"^(block\d)_")
_XCEPTION = Family("xception", "tf", r"^(block\d+)_", min_input_size=71)
_DENSENET = Family("densenet", "torch", r"^(conv\d_block\d+|pool\d)_")
_MOBILENET = Family("mobilenet", "tf", r"^conv_(?:dw|pw|pad)_(\d+)", r"block\1")
_MOBILENET_V2 = Family("mobilenet_v2", "tf", r"^(block_\d+|expanded_conv)_")
_MOBILENET_V3 = Family("mobilenet_v3", "none", r"^(expanded_conv(?:_\d+)?)_")
_EFFICIENTNET = Family("efficientnet", "none", r"^(block\d[a-z])_")
_EFFICIENTNET_V2 = Family("efficientnet_v2", "none", r"^(block\d[a-z])_")
_CONVNEXT = Family(
    "convnext", "none", r"^convnext_[a-z]+_(stage_\d+_block_\d+|downsampling_block_\d+)"
)
_NASNET = Family(
    "nasnet",
    "tf",
    r"(?:normal|reduction|adjust)\w*?_((?:stem_|reduce_)?\d+)$",
    r"cell_\1",
    fixed_imagenet_size=True,
    block_end_pattern=r"^(normal|reduction)_concat",
)

# name, constructor, native size, pooled width, headless params, family.
# Widths and parameter counts are checked against the real models by
# tests/test_backbones.py (weights=None, tiny inputs).
_TABLE: Sequence[tuple] = (
    ("resnet50", "ResNet50", 224, 2048, 23587712, _RESNET),
    ("resnet101", "ResNet101", 224, 2048, 42658176, _RESNET),
    ("resnet152", "ResNet152", 224, 2048, 58370944, _RESNET),
    ("resnet50v2", "ResNet50V2", 224, 2048, 23564800, _RESNET_V2),
    ("resnet101v2", "ResNet101V2", 224, 2048, 42626560, _RESNET_V2),
    ("resnet152v2", "ResNet152V2", 224, 2048, 58331648, _RESNET_V2),
    ("inceptionv3", "InceptionV3", 299, 2048, 21802784, _INCEPTION_V3),
    ("inceptionresnetv2", "InceptionResNetV2", 299, 1536, 54336736, _INCEPTION_RESNET_V2),
    ("vgg16", "VGG16", 224, 512, 14714688, _VGG16),
    ("vgg19", "VGG19", 224, 512, 20024384, _VGG19),
    ("xception", "Xception", 299, 2048, 20861480, _XCEPTION),
    ("densenet121", "DenseNet121", 224, 1024, 7037504, _DENSENET),
    ("densenet169", "DenseNet169", 224, 1664, 12642880, _DENSENET),
    ("densenet201", "DenseNet201", 224, 1920, 18321984, _DENSENET),
    ("mobilenet", "MobileNet", 224, 1024, 3228864, _MOBILENET),
    ("mobilenetv2", "MobileNetV2", 224, 1280, 2257984, _MOBILENET_V2),
    ("mobilenetv3small", "MobileNetV3Small", 224, 576, 939120, _MOBILENET_V3),
    ("mobilenetv3large", "MobileNetV3Large", 224, 960, 2996352, _MOBILENET_V3),
    ("efficientnetb0", "EfficientNetB0", 224, 1280, 4049571, _EFFICIENTNET),
    ("efficientnetb1", "EfficientNetB1", 240, 1280, 6575239, _EFFICIENTNET),
    ("efficientnetb2", "EfficientNetB2", 260, 1408, 7768569, _EFFICIENTNET),
    ("efficientnetb3", "EfficientNetB3", 300, 1536, 10783535, _EFFICIENTNET),
    ("efficientnetb4", "EfficientNetB4", 380, 1792, 17673823, _EFFICIENTNET),
    ("efficientnetb5", "EfficientNetB5", 456, 2048, 28513527, _EFFICIENTNET),
    ("efficientnetb6", "EfficientNetB6", 528, 2304, 40960143, _EFFICIENTNET),
    ("efficientnetb7", "EfficientNetB7", 600, 2560, 64097687, _EFFICIENTNET),
    ("efficientnetv2b0", "EfficientNetV2B0", 224, 1280, 5919312, _EFFICIENTNET_V2),
    ("efficientnetv2b1", "EfficientNetV2B1", 240, 1280, 6931124, _EFFICIENTNET_V2),
    ("efficientnetv2b2", "EfficientNetV2B2", 260, 1408, 8769374, _EFFICIENTNET_V2),
    ("efficientnetv2b3", "EfficientNetV2B3", 300, 1536, 12930622, _EFFICIENTNET_V2),
    ("efficientnetv2s", "EfficientNetV2S", 384, 1280, 20331360, _EFFICIENTNET_V2),
    ("efficientnetv2m", "EfficientNetV2M", 480, 1280, 53150388, _EFFICIENTNET_V2),
    ("efficientnetv2l", "EfficientNetV2L", 480, 1280, 117746848, _EFFICIENTNET_V2),
    ("convnexttiny", "ConvNeXtTiny", 224, 768, 27820128, _CONVNEXT),
    ("convnextsmall", "ConvNeXtSmall", 224, 768, 49454688, _CONVNEXT),
    ("convnextbase", "ConvNeXtBase", 224, 1024, 87566464, _CONVNEXT),
    ("convnextlarge", "ConvNeXtLarge", 224, 1536, 196230336, _CONVNEXT),
    ("convnextxlarge", "ConvNeXtXLarge", 224, 2048, 348147968, _CONVNEXT),
    ("nasnetmobile", "NASNetMobile", 224, 1056, 4269716, _NASNET),
    ("nasnetlarge", "NASNetLarge", 331, 4032, 84916818, _NASNET),
)

REGISTRY: dict[str, Backbone] = {row[0]: Backbone(*row) for row in _TABLE}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


def list_backbones(pattern: str | None = None) -> list[Backbone]:
    """Registry records whose name matches ``pattern`` (all by default).

    A shell-style pattern (``efficientnet*``, ``resnet?0``) matches whole
    names; a plain word matches anywhere in the name, as ``*word*`` would
    (``vgg`` finds vgg16 and vgg19; case, ``-`` and ``_`` do not matter).
    """
    if not pattern:
        return list(REGISTRY.values())
    pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{_normalise(pattern)}*"
    return [b for b in REGISTRY.values() if fnmatch.fnmatchcase(b.name, pat)]


def get_backbone(name: str | Backbone) -> Backbone:
    """Look a backbone up by name (case, ``-`` and ``_`` do not matter).

    Raises
    ------
    UnknownBackbone
        With the closest registry names as suggestions.
    """
    if isinstance(name, Backbone):
        return name
    key = _normalise(name)
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownBackbone(
        f"Unknown backbone {name!r}.{hint} Run `featx backbones` to list all "
        f"{len(REGISTRY)}. Received: backbone={name!r}"
    )
