"""What fine-tuning can unfreeze in each backbone, known without building it.

For every registry backbone: its named blocks in order (the ones
:func:`featx.backbones.blocks` finds), each with the number of layers that
have weights to train (BatchNormalization excluded: it stays frozen) from
the input up to the block's end. So ``featx finetune --unfreeze 60`` or
``--unfreeze-blocks 6`` on VGG16 is refused in milliseconds, with the
largest valid value, instead of after building the model and checking
parity.

The counts were measured from the real ``keras.applications`` models
(``weights=None``, smallest input size) with :func:`measure`; a test checks
them against the models for a few backbones. Regenerate after a Keras
upgrade that changes a family::

    python -m featx.unfreeze_table > /tmp/table.py   # then paste TABLE below

The check after the real build (:func:`featx.tuning.set_trainable`)
stays the authority; a backbone missing here is checked there only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unfreezable:
    """The named blocks of a (possibly tapped) backbone and the layers with weights they hold.

    ``blocks[i]`` is ``(name, n)``: ``n`` layers with weights to train from the
    input through the end of block ``i``. ``total`` counts every one.
    """

    backbone: str
    blocks: tuple[tuple[str, int], ...]
    total: int

    def layers_in_last_blocks(self, k: int) -> int:
        """Layers with weights that ``--unfreeze-blocks k`` unfreezes."""
        return self.total - (self.blocks[-(k + 1)][1] if k < len(self.blocks) else 0)

    def block_names(self, k: int) -> str:
        """``"block5"`` or ``"block4 .. block5"``: the last ``k`` blocks."""
        last = [name for name, _ in self.blocks[-k:]]
        return last[0] if len(last) == 1 else f"{last[0]} .. {last[-1]}"

    def blocks_hint(self, most: int = 3) -> str:
        """``--unfreeze-blocks 1 = block5 (3 layers), 2 = block4 .. block5 (6 layers), ...``"""
        parts = [f"{k} = {self.block_names(k)} ({self.layers_in_last_blocks(k)} layers)"
                 for k in range(1, min(most, len(self.blocks)) + 1)]
        more = f", ... up to {len(self.blocks)}" if len(self.blocks) > most else ""
        return "--unfreeze-blocks " + ", ".join(parts) + more


def unfreezable(backbone: str, cut_blocks: int = 0) -> Unfreezable | None:
    """What can be unfrozen in ``backbone`` tapped ``cut_blocks`` blocks before the end.

    A backbone tapped earlier ends at that block, so its last blocks and
    their layers are not there to unfreeze. None when the table does not
    know the backbone (or the cut is out of range).
    """
    row = TABLE.get(backbone)
    if row is None or not 0 <= cut_blocks < len(row):
        return None
    blocks = tuple(row[: len(row) - cut_blocks])
    return Unfreezable(backbone, blocks, blocks[-1][1])


def measure(backbone: str) -> tuple[tuple[str, int], ...]:
    """A backbone's row of :data:`TABLE`, from the real model (random weights, smallest input)."""
    import numpy as np

    from . import backbones as B
    from .runtime import import_keras

    keras = import_keras()
    bb = B.get_backbone(backbone)
    model = B.build_backbone(bb, B.Weights("random", None, "random", 0), max(32, bb.min_input_size), pooling="avg")
    weighted = np.cumsum([1 if layer.weights and "BatchNormalization" not in type(layer).__name__ else 0
                          for layer in model.layers])
    row = tuple((b.name, int(weighted[b.end])) for b in B.blocks(model, bb))
    del model
    keras.backend.clear_session()
    return row


def _print_table() -> None:  # pragma: no cover - a maintenance tool
    from .backbones import REGISTRY

    print("TABLE: dict[str, tuple[tuple[str, int], ...]] = {")
    for name in REGISTRY:
        row = measure(name)
        print(f"    {name!r}: (")
        line = "       "
        for block, n in row:
            item = f" ({block!r}, {n}),"
            if len(line) + len(item) > 110:
                print(line)
                line = "       "
            line += item
        print(line)
        print("    ),")
    print("}")


# Measured with Keras 3.15.1 on 2026-11-27 (python -m featx.unfreeze_table).
TABLE: dict[str, tuple[tuple[str, int], ...]] = {
    'resnet50': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv4_block1', 28),
        ('conv4_block2', 31), ('conv4_block3', 34), ('conv4_block4', 37), ('conv4_block5', 40),
        ('conv4_block6', 43), ('conv5_block1', 47), ('conv5_block2', 50), ('conv5_block3', 53),
    ),
    'resnet101': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv4_block1', 28),
        ('conv4_block2', 31), ('conv4_block3', 34), ('conv4_block4', 37), ('conv4_block5', 40),
        ('conv4_block6', 43), ('conv4_block7', 46), ('conv4_block8', 49), ('conv4_block9', 52),
        ('conv4_block10', 55), ('conv4_block11', 58), ('conv4_block12', 61), ('conv4_block13', 64),
        ('conv4_block14', 67), ('conv4_block15', 70), ('conv4_block16', 73), ('conv4_block17', 76),
        ('conv4_block18', 79), ('conv4_block19', 82), ('conv4_block20', 85), ('conv4_block21', 88),
        ('conv4_block22', 91), ('conv4_block23', 94), ('conv5_block1', 98), ('conv5_block2', 101),
        ('conv5_block3', 104),
    ),
    'resnet152': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv3_block5', 27),
        ('conv3_block6', 30), ('conv3_block7', 33), ('conv3_block8', 36), ('conv4_block1', 40),
        ('conv4_block2', 43), ('conv4_block3', 46), ('conv4_block4', 49), ('conv4_block5', 52),
        ('conv4_block6', 55), ('conv4_block7', 58), ('conv4_block8', 61), ('conv4_block9', 64),
        ('conv4_block10', 67), ('conv4_block11', 70), ('conv4_block12', 73), ('conv4_block13', 76),
        ('conv4_block14', 79), ('conv4_block15', 82), ('conv4_block16', 85), ('conv4_block17', 88),
        ('conv4_block18', 91), ('conv4_block19', 94), ('conv4_block20', 97), ('conv4_block21', 100),
        ('conv4_block22', 103), ('conv4_block23', 106), ('conv4_block24', 109), ('conv4_block25', 112),
        ('conv4_block26', 115), ('conv4_block27', 118), ('conv4_block28', 121), ('conv4_block29', 124),
        ('conv4_block30', 127), ('conv4_block31', 130), ('conv4_block32', 133), ('conv4_block33', 136),
        ('conv4_block34', 139), ('conv4_block35', 142), ('conv4_block36', 145), ('conv5_block1', 149),
        ('conv5_block2', 152), ('conv5_block3', 155),
    ),
    'resnet50v2': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv4_block1', 28),
        ('conv4_block2', 31), ('conv4_block3', 34), ('conv4_block4', 37), ('conv4_block5', 40),
        ('conv4_block6', 43), ('conv5_block1', 47), ('conv5_block2', 50), ('conv5_block3', 53),
    ),
    'resnet101v2': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv4_block1', 28),
        ('conv4_block2', 31), ('conv4_block3', 34), ('conv4_block4', 37), ('conv4_block5', 40),
        ('conv4_block6', 43), ('conv4_block7', 46), ('conv4_block8', 49), ('conv4_block9', 52),
        ('conv4_block10', 55), ('conv4_block11', 58), ('conv4_block12', 61), ('conv4_block13', 64),
        ('conv4_block14', 67), ('conv4_block15', 70), ('conv4_block16', 73), ('conv4_block17', 76),
        ('conv4_block18', 79), ('conv4_block19', 82), ('conv4_block20', 85), ('conv4_block21', 88),
        ('conv4_block22', 91), ('conv4_block23', 94), ('conv5_block1', 98), ('conv5_block2', 101),
        ('conv5_block3', 104),
    ),
    'resnet152v2': (
        ('conv2_block1', 5), ('conv2_block2', 8), ('conv2_block3', 11), ('conv3_block1', 15),
        ('conv3_block2', 18), ('conv3_block3', 21), ('conv3_block4', 24), ('conv3_block5', 27),
        ('conv3_block6', 30), ('conv3_block7', 33), ('conv3_block8', 36), ('conv4_block1', 40),
        ('conv4_block2', 43), ('conv4_block3', 46), ('conv4_block4', 49), ('conv4_block5', 52),
        ('conv4_block6', 55), ('conv4_block7', 58), ('conv4_block8', 61), ('conv4_block9', 64),
        ('conv4_block10', 67), ('conv4_block11', 70), ('conv4_block12', 73), ('conv4_block13', 76),
        ('conv4_block14', 79), ('conv4_block15', 82), ('conv4_block16', 85), ('conv4_block17', 88),
        ('conv4_block18', 91), ('conv4_block19', 94), ('conv4_block20', 97), ('conv4_block21', 100),
        ('conv4_block22', 103), ('conv4_block23', 106), ('conv4_block24', 109), ('conv4_block25', 112),
        ('conv4_block26', 115), ('conv4_block27', 118), ('conv4_block28', 121), ('conv4_block29', 124),
        ('conv4_block30', 127), ('conv4_block31', 130), ('conv4_block32', 133), ('conv4_block33', 136),
        ('conv4_block34', 139), ('conv4_block35', 142), ('conv4_block36', 145), ('conv5_block1', 149),
        ('conv5_block2', 152), ('conv5_block3', 155),
    ),
    'inceptionv3': (
        ('mixed0', 12), ('mixed1', 19), ('mixed2', 26), ('mixed3', 30), ('mixed4', 40), ('mixed5', 50),
        ('mixed6', 60), ('mixed7', 70), ('mixed8', 76), ('mixed9', 85), ('mixed10', 94),
    ),
    'inceptionresnetv2': (
        ('mixed_5b', 12), ('block35_1', 19), ('block35_2', 26), ('block35_3', 33), ('block35_4', 40),
        ('block35_5', 47), ('block35_6', 54), ('block35_7', 61), ('block35_8', 68), ('block35_9', 75),
        ('block35_10', 82), ('mixed_6a', 86), ('block17_1', 91), ('block17_2', 96), ('block17_3', 101),
        ('block17_4', 106), ('block17_5', 111), ('block17_6', 116), ('block17_7', 121), ('block17_8', 126),
        ('block17_9', 131), ('block17_10', 136), ('block17_11', 141), ('block17_12', 146),
        ('block17_13', 151), ('block17_14', 156), ('block17_15', 161), ('block17_16', 166),
        ('block17_17', 171), ('block17_18', 176), ('block17_19', 181), ('block17_20', 186), ('mixed_7a', 193),
        ('block8_1', 198), ('block8_2', 203), ('block8_3', 208), ('block8_4', 213), ('block8_5', 218),
        ('block8_6', 223), ('block8_7', 228), ('block8_8', 233), ('block8_9', 238), ('block8_10', 243),
        ('conv_7b', 244),
    ),
    'vgg16': (
        ('block1', 2), ('block2', 4), ('block3', 7), ('block4', 10), ('block5', 13),
    ),
    'vgg19': (
        ('block1', 2), ('block2', 4), ('block3', 8), ('block4', 12), ('block5', 16),
    ),
    'xception': (
        ('block1', 2), ('block2', 5), ('block3', 8), ('block4', 11), ('block5', 14), ('block6', 17),
        ('block7', 20), ('block8', 23), ('block9', 26), ('block10', 29), ('block11', 32), ('block12', 35),
        ('block13', 38), ('block14', 40),
    ),
    'densenet121': (
        ('conv2_block1', 3), ('conv2_block2', 5), ('conv2_block3', 7), ('conv2_block4', 9),
        ('conv2_block5', 11), ('conv2_block6', 13), ('pool2', 14), ('conv3_block1', 16), ('conv3_block2', 18),
        ('conv3_block3', 20), ('conv3_block4', 22), ('conv3_block5', 24), ('conv3_block6', 26),
        ('conv3_block7', 28), ('conv3_block8', 30), ('conv3_block9', 32), ('conv3_block10', 34),
        ('conv3_block11', 36), ('conv3_block12', 38), ('pool3', 39), ('conv4_block1', 41),
        ('conv4_block2', 43), ('conv4_block3', 45), ('conv4_block4', 47), ('conv4_block5', 49),
        ('conv4_block6', 51), ('conv4_block7', 53), ('conv4_block8', 55), ('conv4_block9', 57),
        ('conv4_block10', 59), ('conv4_block11', 61), ('conv4_block12', 63), ('conv4_block13', 65),
        ('conv4_block14', 67), ('conv4_block15', 69), ('conv4_block16', 71), ('conv4_block17', 73),
        ('conv4_block18', 75), ('conv4_block19', 77), ('conv4_block20', 79), ('conv4_block21', 81),
        ('conv4_block22', 83), ('conv4_block23', 85), ('conv4_block24', 87), ('pool4', 88),
        ('conv5_block1', 90), ('conv5_block2', 92), ('conv5_block3', 94), ('conv5_block4', 96),
        ('conv5_block5', 98), ('conv5_block6', 100), ('conv5_block7', 102), ('conv5_block8', 104),
        ('conv5_block9', 106), ('conv5_block10', 108), ('conv5_block11', 110), ('conv5_block12', 112),
        ('conv5_block13', 114), ('conv5_block14', 116), ('conv5_block15', 118), ('conv5_block16', 120),
    ),
    'densenet169': (
        ('conv2_block1', 3), ('conv2_block2', 5), ('conv2_block3', 7), ('conv2_block4', 9),
        ('conv2_block5', 11), ('conv2_block6', 13), ('pool2', 14), ('conv3_block1', 16), ('conv3_block2', 18),
        ('conv3_block3', 20), ('conv3_block4', 22), ('conv3_block5', 24), ('conv3_block6', 26),
        ('conv3_block7', 28), ('conv3_block8', 30), ('conv3_block9', 32), ('conv3_block10', 34),
        ('conv3_block11', 36), ('conv3_block12', 38), ('pool3', 39), ('conv4_block1', 41),
        ('conv4_block2', 43), ('conv4_block3', 45), ('conv4_block4', 47), ('conv4_block5', 49),
        ('conv4_block6', 51), ('conv4_block7', 53), ('conv4_block8', 55), ('conv4_block9', 57),
        ('conv4_block10', 59), ('conv4_block11', 61), ('conv4_block12', 63), ('conv4_block13', 65),
        ('conv4_block14', 67), ('conv4_block15', 69), ('conv4_block16', 71), ('conv4_block17', 73),
        ('conv4_block18', 75), ('conv4_block19', 77), ('conv4_block20', 79), ('conv4_block21', 81),
        ('conv4_block22', 83), ('conv4_block23', 85), ('conv4_block24', 87), ('conv4_block25', 89),
        ('conv4_block26', 91), ('conv4_block27', 93), ('conv4_block28', 95), ('conv4_block29', 97),
        ('conv4_block30', 99), ('conv4_block31', 101), ('conv4_block32', 103), ('pool4', 104),
        ('conv5_block1', 106), ('conv5_block2', 108), ('conv5_block3', 110), ('conv5_block4', 112),
        ('conv5_block5', 114), ('conv5_block6', 116), ('conv5_block7', 118), ('conv5_block8', 120),
        ('conv5_block9', 122), ('conv5_block10', 124), ('conv5_block11', 126), ('conv5_block12', 128),
        ('conv5_block13', 130), ('conv5_block14', 132), ('conv5_block15', 134), ('conv5_block16', 136),
        ('conv5_block17', 138), ('conv5_block18', 140), ('conv5_block19', 142), ('conv5_block20', 144),
        ('conv5_block21', 146), ('conv5_block22', 148), ('conv5_block23', 150), ('conv5_block24', 152),
        ('conv5_block25', 154), ('conv5_block26', 156), ('conv5_block27', 158), ('conv5_block28', 160),
        ('conv5_block29', 162), ('conv5_block30', 164), ('conv5_block31', 166), ('conv5_block32', 168),
    ),
    'densenet201': (
        ('conv2_block1', 3), ('conv2_block2', 5), ('conv2_block3', 7), ('conv2_block4', 9),
        ('conv2_block5', 11), ('conv2_block6', 13), ('pool2', 14), ('conv3_block1', 16), ('conv3_block2', 18),
        ('conv3_block3', 20), ('conv3_block4', 22), ('conv3_block5', 24), ('conv3_block6', 26),
        ('conv3_block7', 28), ('conv3_block8', 30), ('conv3_block9', 32), ('conv3_block10', 34),
        ('conv3_block11', 36), ('conv3_block12', 38), ('pool3', 39), ('conv4_block1', 41),
        ('conv4_block2', 43), ('conv4_block3', 45), ('conv4_block4', 47), ('conv4_block5', 49),
        ('conv4_block6', 51), ('conv4_block7', 53), ('conv4_block8', 55), ('conv4_block9', 57),
        ('conv4_block10', 59), ('conv4_block11', 61), ('conv4_block12', 63), ('conv4_block13', 65),
        ('conv4_block14', 67), ('conv4_block15', 69), ('conv4_block16', 71), ('conv4_block17', 73),
        ('conv4_block18', 75), ('conv4_block19', 77), ('conv4_block20', 79), ('conv4_block21', 81),
        ('conv4_block22', 83), ('conv4_block23', 85), ('conv4_block24', 87), ('conv4_block25', 89),
        ('conv4_block26', 91), ('conv4_block27', 93), ('conv4_block28', 95), ('conv4_block29', 97),
        ('conv4_block30', 99), ('conv4_block31', 101), ('conv4_block32', 103), ('conv4_block33', 105),
        ('conv4_block34', 107), ('conv4_block35', 109), ('conv4_block36', 111), ('conv4_block37', 113),
        ('conv4_block38', 115), ('conv4_block39', 117), ('conv4_block40', 119), ('conv4_block41', 121),
        ('conv4_block42', 123), ('conv4_block43', 125), ('conv4_block44', 127), ('conv4_block45', 129),
        ('conv4_block46', 131), ('conv4_block47', 133), ('conv4_block48', 135), ('pool4', 136),
        ('conv5_block1', 138), ('conv5_block2', 140), ('conv5_block3', 142), ('conv5_block4', 144),
        ('conv5_block5', 146), ('conv5_block6', 148), ('conv5_block7', 150), ('conv5_block8', 152),
        ('conv5_block9', 154), ('conv5_block10', 156), ('conv5_block11', 158), ('conv5_block12', 160),
        ('conv5_block13', 162), ('conv5_block14', 164), ('conv5_block15', 166), ('conv5_block16', 168),
        ('conv5_block17', 170), ('conv5_block18', 172), ('conv5_block19', 174), ('conv5_block20', 176),
        ('conv5_block21', 178), ('conv5_block22', 180), ('conv5_block23', 182), ('conv5_block24', 184),
        ('conv5_block25', 186), ('conv5_block26', 188), ('conv5_block27', 190), ('conv5_block28', 192),
        ('conv5_block29', 194), ('conv5_block30', 196), ('conv5_block31', 198), ('conv5_block32', 200),
    ),
    'mobilenet': (
        ('block1', 3), ('block2', 5), ('block3', 7), ('block4', 9), ('block5', 11), ('block6', 13),
        ('block7', 15), ('block8', 17), ('block9', 19), ('block10', 21), ('block11', 23), ('block12', 25),
        ('block13', 27),
    ),
    'mobilenetv2': (
        ('expanded_conv', 3), ('block_1', 6), ('block_2', 9), ('block_3', 12), ('block_4', 15),
        ('block_5', 18), ('block_6', 21), ('block_7', 24), ('block_8', 27), ('block_9', 30), ('block_10', 33),
        ('block_11', 36), ('block_12', 39), ('block_13', 42), ('block_14', 45), ('block_15', 48),
        ('block_16', 52),
    ),
    'mobilenetv3small': (
        ('expanded_conv', 5), ('expanded_conv_1', 8), ('expanded_conv_2', 11), ('expanded_conv_3', 16),
        ('expanded_conv_4', 21), ('expanded_conv_5', 26), ('expanded_conv_6', 31), ('expanded_conv_7', 36),
        ('expanded_conv_8', 41), ('expanded_conv_9', 46), ('expanded_conv_10', 52),
    ),
    'mobilenetv3large': (
        ('expanded_conv', 3), ('expanded_conv_1', 6), ('expanded_conv_2', 9), ('expanded_conv_3', 14),
        ('expanded_conv_4', 19), ('expanded_conv_5', 24), ('expanded_conv_6', 27), ('expanded_conv_7', 30),
        ('expanded_conv_8', 33), ('expanded_conv_9', 36), ('expanded_conv_10', 41), ('expanded_conv_11', 46),
        ('expanded_conv_12', 51), ('expanded_conv_13', 56), ('expanded_conv_14', 62),
    ),
    'efficientnetb0': (
        ('block1a', 6), ('block2a', 11), ('block2b', 16), ('block3a', 21), ('block3b', 26), ('block4a', 31),
        ('block4b', 36), ('block4c', 41), ('block5a', 46), ('block5b', 51), ('block5c', 56), ('block6a', 61),
        ('block6b', 66), ('block6c', 71), ('block6d', 76), ('block7a', 82),
    ),
    'efficientnetb1': (
        ('block1a', 6), ('block1b', 10), ('block2a', 15), ('block2b', 20), ('block2c', 25), ('block3a', 30),
        ('block3b', 35), ('block3c', 40), ('block4a', 45), ('block4b', 50), ('block4c', 55), ('block4d', 60),
        ('block5a', 65), ('block5b', 70), ('block5c', 75), ('block5d', 80), ('block6a', 85), ('block6b', 90),
        ('block6c', 95), ('block6d', 100), ('block6e', 105), ('block7a', 110), ('block7b', 116),
    ),
    'efficientnetb2': (
        ('block1a', 6), ('block1b', 10), ('block2a', 15), ('block2b', 20), ('block2c', 25), ('block3a', 30),
        ('block3b', 35), ('block3c', 40), ('block4a', 45), ('block4b', 50), ('block4c', 55), ('block4d', 60),
        ('block5a', 65), ('block5b', 70), ('block5c', 75), ('block5d', 80), ('block6a', 85), ('block6b', 90),
        ('block6c', 95), ('block6d', 100), ('block6e', 105), ('block7a', 110), ('block7b', 116),
    ),
    'efficientnetb3': (
        ('block1a', 6), ('block1b', 10), ('block2a', 15), ('block2b', 20), ('block2c', 25), ('block3a', 30),
        ('block3b', 35), ('block3c', 40), ('block4a', 45), ('block4b', 50), ('block4c', 55), ('block4d', 60),
        ('block4e', 65), ('block5a', 70), ('block5b', 75), ('block5c', 80), ('block5d', 85), ('block5e', 90),
        ('block6a', 95), ('block6b', 100), ('block6c', 105), ('block6d', 110), ('block6e', 115),
        ('block6f', 120), ('block7a', 125), ('block7b', 131),
    ),
    'efficientnetb4': (
        ('block1a', 6), ('block1b', 10), ('block2a', 15), ('block2b', 20), ('block2c', 25), ('block2d', 30),
        ('block3a', 35), ('block3b', 40), ('block3c', 45), ('block3d', 50), ('block4a', 55), ('block4b', 60),
        ('block4c', 65), ('block4d', 70), ('block4e', 75), ('block4f', 80), ('block5a', 85), ('block5b', 90),
        ('block5c', 95), ('block5d', 100), ('block5e', 105), ('block5f', 110), ('block6a', 115),
        ('block6b', 120), ('block6c', 125), ('block6d', 130), ('block6e', 135), ('block6f', 140),
        ('block6g', 145), ('block6h', 150), ('block7a', 155), ('block7b', 161),
    ),
    'efficientnetb5': (
        ('block1a', 6), ('block1b', 10), ('block1c', 14), ('block2a', 19), ('block2b', 24), ('block2c', 29),
        ('block2d', 34), ('block2e', 39), ('block3a', 44), ('block3b', 49), ('block3c', 54), ('block3d', 59),
        ('block3e', 64), ('block4a', 69), ('block4b', 74), ('block4c', 79), ('block4d', 84), ('block4e', 89),
        ('block4f', 94), ('block4g', 99), ('block5a', 104), ('block5b', 109), ('block5c', 114),
        ('block5d', 119), ('block5e', 124), ('block5f', 129), ('block5g', 134), ('block6a', 139),
        ('block6b', 144), ('block6c', 149), ('block6d', 154), ('block6e', 159), ('block6f', 164),
        ('block6g', 169), ('block6h', 174), ('block6i', 179), ('block7a', 184), ('block7b', 189),
        ('block7c', 195),
    ),
    'efficientnetb6': (
        ('block1a', 6), ('block1b', 10), ('block1c', 14), ('block2a', 19), ('block2b', 24), ('block2c', 29),
        ('block2d', 34), ('block2e', 39), ('block2f', 44), ('block3a', 49), ('block3b', 54), ('block3c', 59),
        ('block3d', 64), ('block3e', 69), ('block3f', 74), ('block4a', 79), ('block4b', 84), ('block4c', 89),
        ('block4d', 94), ('block4e', 99), ('block4f', 104), ('block4g', 109), ('block4h', 114),
        ('block5a', 119), ('block5b', 124), ('block5c', 129), ('block5d', 134), ('block5e', 139),
        ('block5f', 144), ('block5g', 149), ('block5h', 154), ('block6a', 159), ('block6b', 164),
        ('block6c', 169), ('block6d', 174), ('block6e', 179), ('block6f', 184), ('block6g', 189),
        ('block6h', 194), ('block6i', 199), ('block6j', 204), ('block6k', 209), ('block7a', 214),
        ('block7b', 219), ('block7c', 225),
    ),
    'efficientnetb7': (
        ('block1a', 6), ('block1b', 10), ('block1c', 14), ('block1d', 18), ('block2a', 23), ('block2b', 28),
        ('block2c', 33), ('block2d', 38), ('block2e', 43), ('block2f', 48), ('block2g', 53), ('block3a', 58),
        ('block3b', 63), ('block3c', 68), ('block3d', 73), ('block3e', 78), ('block3f', 83), ('block3g', 88),
        ('block4a', 93), ('block4b', 98), ('block4c', 103), ('block4d', 108), ('block4e', 113),
        ('block4f', 118), ('block4g', 123), ('block4h', 128), ('block4i', 133), ('block4j', 138),
        ('block5a', 143), ('block5b', 148), ('block5c', 153), ('block5d', 158), ('block5e', 163),
        ('block5f', 168), ('block5g', 173), ('block5h', 178), ('block5i', 183), ('block5j', 188),
        ('block6a', 193), ('block6b', 198), ('block6c', 203), ('block6d', 208), ('block6e', 213),
        ('block6f', 218), ('block6g', 223), ('block6h', 228), ('block6i', 233), ('block6j', 238),
        ('block6k', 243), ('block6l', 248), ('block6m', 253), ('block7a', 258), ('block7b', 263),
        ('block7c', 268), ('block7d', 274),
    ),
    'efficientnetv2b0': (
        ('block1a', 2), ('block2a', 4), ('block2b', 6), ('block3a', 8), ('block3b', 10), ('block4a', 15),
        ('block4b', 20), ('block4c', 25), ('block5a', 30), ('block5b', 35), ('block5c', 40), ('block5d', 45),
        ('block5e', 50), ('block6a', 55), ('block6b', 60), ('block6c', 65), ('block6d', 70), ('block6e', 75),
        ('block6f', 80), ('block6g', 85), ('block6h', 91),
    ),
    'efficientnetv2b1': (
        ('block1a', 2), ('block1b', 3), ('block2a', 5), ('block2b', 7), ('block2c', 9), ('block3a', 11),
        ('block3b', 13), ('block3c', 15), ('block4a', 20), ('block4b', 25), ('block4c', 30), ('block4d', 35),
        ('block5a', 40), ('block5b', 45), ('block5c', 50), ('block5d', 55), ('block5e', 60), ('block5f', 65),
        ('block6a', 70), ('block6b', 75), ('block6c', 80), ('block6d', 85), ('block6e', 90), ('block6f', 95),
        ('block6g', 100), ('block6h', 105), ('block6i', 111),
    ),
    'efficientnetv2b2': (
        ('block1a', 2), ('block1b', 3), ('block2a', 5), ('block2b', 7), ('block2c', 9), ('block3a', 11),
        ('block3b', 13), ('block3c', 15), ('block4a', 20), ('block4b', 25), ('block4c', 30), ('block4d', 35),
        ('block5a', 40), ('block5b', 45), ('block5c', 50), ('block5d', 55), ('block5e', 60), ('block5f', 65),
        ('block6a', 70), ('block6b', 75), ('block6c', 80), ('block6d', 85), ('block6e', 90), ('block6f', 95),
        ('block6g', 100), ('block6h', 105), ('block6i', 110), ('block6j', 116),
    ),
    'efficientnetv2b3': (
        ('block1a', 2), ('block1b', 3), ('block2a', 5), ('block2b', 7), ('block2c', 9), ('block3a', 11),
        ('block3b', 13), ('block3c', 15), ('block4a', 20), ('block4b', 25), ('block4c', 30), ('block4d', 35),
        ('block4e', 40), ('block5a', 45), ('block5b', 50), ('block5c', 55), ('block5d', 60), ('block5e', 65),
        ('block5f', 70), ('block5g', 75), ('block6a', 80), ('block6b', 85), ('block6c', 90), ('block6d', 95),
        ('block6e', 100), ('block6f', 105), ('block6g', 110), ('block6h', 115), ('block6i', 120),
        ('block6j', 125), ('block6k', 130), ('block6l', 136),
    ),
    'efficientnetv2s': (
        ('block1a', 2), ('block1b', 3), ('block2a', 5), ('block2b', 7), ('block2c', 9), ('block2d', 11),
        ('block3a', 13), ('block3b', 15), ('block3c', 17), ('block3d', 19), ('block4a', 24), ('block4b', 29),
        ('block4c', 34), ('block4d', 39), ('block4e', 44), ('block4f', 49), ('block5a', 54), ('block5b', 59),
        ('block5c', 64), ('block5d', 69), ('block5e', 74), ('block5f', 79), ('block5g', 84), ('block5h', 89),
        ('block5i', 94), ('block6a', 99), ('block6b', 104), ('block6c', 109), ('block6d', 114),
        ('block6e', 119), ('block6f', 124), ('block6g', 129), ('block6h', 134), ('block6i', 139),
        ('block6j', 144), ('block6k', 149), ('block6l', 154), ('block6m', 159), ('block6n', 164),
        ('block6o', 170),
    ),
    'efficientnetv2m': (
        ('block1a', 2), ('block1b', 3), ('block1c', 4), ('block2a', 6), ('block2b', 8), ('block2c', 10),
        ('block2d', 12), ('block2e', 14), ('block3a', 16), ('block3b', 18), ('block3c', 20), ('block3d', 22),
        ('block3e', 24), ('block4a', 29), ('block4b', 34), ('block4c', 39), ('block4d', 44), ('block4e', 49),
        ('block4f', 54), ('block4g', 59), ('block5a', 64), ('block5b', 69), ('block5c', 74), ('block5d', 79),
        ('block5e', 84), ('block5f', 89), ('block5g', 94), ('block5h', 99), ('block5i', 104),
        ('block5j', 109), ('block5k', 114), ('block5l', 119), ('block5m', 124), ('block5n', 129),
        ('block6a', 134), ('block6b', 139), ('block6c', 144), ('block6d', 149), ('block6e', 154),
        ('block6f', 159), ('block6g', 164), ('block6h', 169), ('block6i', 174), ('block6j', 179),
        ('block6k', 184), ('block6l', 189), ('block6m', 194), ('block6n', 199), ('block6o', 204),
        ('block6p', 209), ('block6q', 214), ('block6r', 219), ('block7a', 224), ('block7b', 229),
        ('block7c', 234), ('block7d', 239), ('block7e', 245),
    ),
    'efficientnetv2l': (
        ('block1a', 2), ('block1b', 3), ('block1c', 4), ('block1d', 5), ('block2a', 7), ('block2b', 9),
        ('block2c', 11), ('block2d', 13), ('block2e', 15), ('block2f', 17), ('block2g', 19), ('block3a', 21),
        ('block3b', 23), ('block3c', 25), ('block3d', 27), ('block3e', 29), ('block3f', 31), ('block3g', 33),
        ('block4a', 38), ('block4b', 43), ('block4c', 48), ('block4d', 53), ('block4e', 58), ('block4f', 63),
        ('block4g', 68), ('block4h', 73), ('block4i', 78), ('block4j', 83), ('block5a', 88), ('block5b', 93),
        ('block5c', 98), ('block5d', 103), ('block5e', 108), ('block5f', 113), ('block5g', 118),
        ('block5h', 123), ('block5i', 128), ('block5j', 133), ('block5k', 138), ('block5l', 143),
        ('block5m', 148), ('block5n', 153), ('block5o', 158), ('block5p', 163), ('block5q', 168),
        ('block5r', 173), ('block5s', 178), ('block6a', 183), ('block6b', 188), ('block6c', 193),
        ('block6d', 198), ('block6e', 203), ('block6f', 208), ('block6g', 213), ('block6h', 218),
        ('block6i', 223), ('block6j', 228), ('block6k', 233), ('block6l', 238), ('block6m', 243),
        ('block6n', 248), ('block6o', 253), ('block6p', 258), ('block6q', 263), ('block6r', 268),
        ('block6s', 273), ('block6t', 278), ('block6u', 283), ('block6v', 288), ('block6w', 293),
        ('block6x', 298), ('block6y', 303), ('block7a', 308), ('block7b', 313), ('block7c', 318),
        ('block7d', 323), ('block7e', 328), ('block7f', 333), ('block7g', 339),
    ),
    'convnexttiny': (
        ('stage_0_block_0', 6), ('stage_0_block_1', 11), ('stage_0_block_2', 16),
        ('downsampling_block_0', 17), ('stage_1_block_0', 22), ('stage_1_block_1', 27),
        ('stage_1_block_2', 32), ('downsampling_block_1', 33), ('stage_2_block_0', 38),
        ('stage_2_block_1', 43), ('stage_2_block_2', 48), ('stage_2_block_3', 53), ('stage_2_block_4', 58),
        ('stage_2_block_5', 63), ('stage_2_block_6', 68), ('stage_2_block_7', 73), ('stage_2_block_8', 78),
        ('downsampling_block_2', 79), ('stage_3_block_0', 84), ('stage_3_block_1', 89),
        ('stage_3_block_2', 95),
    ),
    'convnextsmall': (
        ('stage_0_block_0', 6), ('stage_0_block_1', 11), ('stage_0_block_2', 16),
        ('downsampling_block_0', 17), ('stage_1_block_0', 22), ('stage_1_block_1', 27),
        ('stage_1_block_2', 32), ('downsampling_block_1', 33), ('stage_2_block_0', 38),
        ('stage_2_block_1', 43), ('stage_2_block_2', 48), ('stage_2_block_3', 53), ('stage_2_block_4', 58),
        ('stage_2_block_5', 63), ('stage_2_block_6', 68), ('stage_2_block_7', 73), ('stage_2_block_8', 78),
        ('stage_2_block_9', 83), ('stage_2_block_10', 88), ('stage_2_block_11', 93), ('stage_2_block_12', 98),
        ('stage_2_block_13', 103), ('stage_2_block_14', 108), ('stage_2_block_15', 113),
        ('stage_2_block_16', 118), ('stage_2_block_17', 123), ('stage_2_block_18', 128),
        ('stage_2_block_19', 133), ('stage_2_block_20', 138), ('stage_2_block_21', 143),
        ('stage_2_block_22', 148), ('stage_2_block_23', 153), ('stage_2_block_24', 158),
        ('stage_2_block_25', 163), ('stage_2_block_26', 168), ('downsampling_block_2', 169),
        ('stage_3_block_0', 174), ('stage_3_block_1', 179), ('stage_3_block_2', 185),
    ),
    'convnextbase': (
        ('stage_0_block_0', 6), ('stage_0_block_1', 11), ('stage_0_block_2', 16),
        ('downsampling_block_0', 17), ('stage_1_block_0', 22), ('stage_1_block_1', 27),
        ('stage_1_block_2', 32), ('downsampling_block_1', 33), ('stage_2_block_0', 38),
        ('stage_2_block_1', 43), ('stage_2_block_2', 48), ('stage_2_block_3', 53), ('stage_2_block_4', 58),
        ('stage_2_block_5', 63), ('stage_2_block_6', 68), ('stage_2_block_7', 73), ('stage_2_block_8', 78),
        ('stage_2_block_9', 83), ('stage_2_block_10', 88), ('stage_2_block_11', 93), ('stage_2_block_12', 98),
        ('stage_2_block_13', 103), ('stage_2_block_14', 108), ('stage_2_block_15', 113),
        ('stage_2_block_16', 118), ('stage_2_block_17', 123), ('stage_2_block_18', 128),
        ('stage_2_block_19', 133), ('stage_2_block_20', 138), ('stage_2_block_21', 143),
        ('stage_2_block_22', 148), ('stage_2_block_23', 153), ('stage_2_block_24', 158),
        ('stage_2_block_25', 163), ('stage_2_block_26', 168), ('downsampling_block_2', 169),
        ('stage_3_block_0', 174), ('stage_3_block_1', 179), ('stage_3_block_2', 185),
    ),
    'convnextlarge': (
        ('stage_0_block_0', 6), ('stage_0_block_1', 11), ('stage_0_block_2', 16),
        ('downsampling_block_0', 17), ('stage_1_block_0', 22), ('stage_1_block_1', 27),
        ('stage_1_block_2', 32), ('downsampling_block_1', 33), ('stage_2_block_0', 38),
        ('stage_2_block_1', 43), ('stage_2_block_2', 48), ('stage_2_block_3', 53), ('stage_2_block_4', 58),
        ('stage_2_block_5', 63), ('stage_2_block_6', 68), ('stage_2_block_7', 73), ('stage_2_block_8', 78),
        ('stage_2_block_9', 83), ('stage_2_block_10', 88), ('stage_2_block_11', 93), ('stage_2_block_12', 98),
        ('stage_2_block_13', 103), ('stage_2_block_14', 108), ('stage_2_block_15', 113),
        ('stage_2_block_16', 118), ('stage_2_block_17', 123), ('stage_2_block_18', 128),
        ('stage_2_block_19', 133), ('stage_2_block_20', 138), ('stage_2_block_21', 143),
        ('stage_2_block_22', 148), ('stage_2_block_23', 153), ('stage_2_block_24', 158),
        ('stage_2_block_25', 163), ('stage_2_block_26', 168), ('downsampling_block_2', 169),
        ('stage_3_block_0', 174), ('stage_3_block_1', 179), ('stage_3_block_2', 185),
    ),
    'convnextxlarge': (
        ('stage_0_block_0', 6), ('stage_0_block_1', 11), ('stage_0_block_2', 16),
        ('downsampling_block_0', 17), ('stage_1_block_0', 22), ('stage_1_block_1', 27),
        ('stage_1_block_2', 32), ('downsampling_block_1', 33), ('stage_2_block_0', 38),
        ('stage_2_block_1', 43), ('stage_2_block_2', 48), ('stage_2_block_3', 53), ('stage_2_block_4', 58),
        ('stage_2_block_5', 63), ('stage_2_block_6', 68), ('stage_2_block_7', 73), ('stage_2_block_8', 78),
        ('stage_2_block_9', 83), ('stage_2_block_10', 88), ('stage_2_block_11', 93), ('stage_2_block_12', 98),
        ('stage_2_block_13', 103), ('stage_2_block_14', 108), ('stage_2_block_15', 113),
        ('stage_2_block_16', 118), ('stage_2_block_17', 123), ('stage_2_block_18', 128),
        ('stage_2_block_19', 133), ('stage_2_block_20', 138), ('stage_2_block_21', 143),
        ('stage_2_block_22', 148), ('stage_2_block_23', 153), ('stage_2_block_24', 158),
        ('stage_2_block_25', 163), ('stage_2_block_26', 168), ('downsampling_block_2', 169),
        ('stage_3_block_0', 174), ('stage_3_block_1', 179), ('stage_3_block_2', 185),
    ),
    'nasnetmobile': (
        ('cell_stem_1', 12), ('cell_stem_2', 25), ('cell_0', 38), ('cell_1', 50), ('cell_2', 62),
        ('cell_3', 74), ('cell_reduce_4', 86), ('cell_5', 99), ('cell_6', 111), ('cell_7', 123),
        ('cell_8', 135), ('cell_reduce_8', 147), ('cell_9', 160), ('cell_10', 172), ('cell_11', 184),
        ('cell_12', 196),
    ),
    'nasnetlarge': (
        ('cell_stem_1', 12), ('cell_stem_2', 25), ('cell_0', 38), ('cell_1', 50), ('cell_2', 62),
        ('cell_3', 74), ('cell_4', 86), ('cell_5', 98), ('cell_reduce_6', 110), ('cell_7', 123),
        ('cell_8', 135), ('cell_9', 147), ('cell_10', 159), ('cell_11', 171), ('cell_12', 183),
        ('cell_reduce_12', 195), ('cell_13', 208), ('cell_14', 220), ('cell_15', 232), ('cell_16', 244),
        ('cell_17', 256), ('cell_18', 268),
    ),
}


if __name__ == "__main__":  # pragma: no cover
    _print_table()
