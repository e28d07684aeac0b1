"""What trains: the layers to unfreeze, BatchNorm kept frozen, and each layer's learning-rate scale."""

from __future__ import annotations

import numpy as np

from .. import backbones as B
from ..spec import one_pass_groups
from .options import FinetuneError


def _sublayers(layer):
    """Every layer nested in ``layer``, depth first (a Keras 3 model's trainable flag is recursive)."""
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _sublayers(sub)


def _is_bn(layer) -> bool:
    return "BatchNormalization" in type(layer).__name__


def set_trainable(model, base, backbone: str, unfreeze: int | str | None = None, unfreeze_blocks: int | None = None) -> int:
    """Unfreeze the last ``unfreeze`` layers or ``unfreeze_blocks`` named blocks
    of the backbone (``"all"`` for every layer); the head stays trainable.

    BatchNormalization layers stay frozen whatever is unfrozen: in Keras 3 a
    frozen BN layer runs in inference mode, so its moving statistics are
    neither used per batch nor overwritten (the classic ResNet/Inception
    fine-tuning trap). Returns the number of backbone layers with weights
    made trainable.
    """
    if unfreeze is not None and unfreeze_blocks is not None:
        raise FinetuneError("Pass --unfreeze or --unfreeze-blocks, not both.")
    n_layers = len(base.layers)
    if unfreeze == "all":
        start = 0
    elif unfreeze is not None:
        # Counted in layers that have weights to train (BatchNorm excluded,
        # it stays frozen): pooling, activation or padding layers would
        # otherwise make "--unfreeze 2" on VGG16 train nothing.
        n = int(unfreeze)
        weighted = [i for i, layer in enumerate(base.layers) if layer.weights and not _is_bn(layer)]
        if n < 1 or n > len(weighted):
            raise FinetuneError(f"The {backbone} backbone has {len(weighted)} layers with trainable weights "
                                f"(BatchNorm excluded); cannot unfreeze the last {n}. The largest is --unfreeze "
                                f"{len(weighted)} (or all); --unfreeze-blocks K unfreezes whole blocks.")
        start = weighted[-n]
    elif unfreeze_blocks is not None:
        named = B.blocks(base, backbone)
        k = int(unfreeze_blocks)
        if k < 1 or k > len(named):
            raise FinetuneError(f"The {backbone} backbone has {len(named)} named blocks; cannot unfreeze the last {k}. "
                                f"The largest is --unfreeze-blocks {len(named)} (or --unfreeze all).")
        start = 0 if k == len(named) else named[-(k + 1)].end + 1
    else:
        start = n_layers  # the head alone
    model.trainable = True  # recursive in Keras 3; the lines below narrow it
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not _is_bn(layer)
    for layer in model.layers:
        if layer is base or any(sub is base for sub in getattr(layer, "layers", ())):
            continue  # the backbone, or the --tta flip wrapper around it
        if layer.name.startswith("featx_preprocess") or layer.name in ("featx_head_order", "featx_gray_to_rgb"):
            layer.trainable = False  # fixed maps, not weights to learn
        elif layer.name != "head" and hasattr(layer, "layers"):
            layer.trainable = False  # another backbone of a fused head stays frozen
        for sub in _sublayers(layer) if layer.name == "head" else ():  # the head (and the models inside it)
            sub.trainable = not _is_bn(sub)
    n_unfrozen = sum(1 for layer in base.layers if layer.trainable and layer.weights)
    if (unfreeze is not None or unfreeze_blocks is not None) and n_unfrozen == 0:
        raise FinetuneError(f"That setting unfreezes no layer with weights in {backbone}; unfreeze more.")
    return n_unfrozen


def layer_table(base, max_rows: int = 60) -> str:
    """Backbone layers with their trainable flag; long frozen runs summarised."""
    rows, run = [], []

    def flush():
        if len(run) == 1:
            rows.append(_row(run[0]))
        elif run:
            params = sum(layer.count_params() for layer in run)
            rows.append(f"  ... {len(run)} frozen layers ({run[0].name} .. {run[-1].name}), {params:,} params")
        run.clear()

    shown, rest = 0, []
    for layer in base.layers:
        if shown >= max_rows:
            rest.append(layer)
        elif not layer.trainable:
            run.append(layer)
        else:
            flush()
            rows.append(_row(layer))
            shown += 1
    flush()
    if rest:
        n_train = sum(1 for layer in rest if layer.trainable)
        params = sum(layer.count_params() for layer in rest)
        rows.append(f"  ... {len(rest)} more layers ({rest[0].name} .. {rest[-1].name}): "
                    f"{n_train} trainable, {len(rest) - n_train} frozen, {params:,} params")
    return "\n".join(rows)


def _row(layer) -> str:
    state = "trainable" if layer.trainable else "frozen"
    return f"  {layer.name:<40} {type(layer).__name__:<22} {state:<10} {layer.count_params():>12,}"


def param_counts(model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, frozen


def describe_unfrozen(base, backbone: str, unfreeze, unfreeze_blocks, n_layers: int, chosen: str = "") -> str:
    """One line: what trains in the backbone, and (``chosen``: why) how to change it."""
    params = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    if unfreeze == "all":
        what = f"all of {backbone}"
    elif unfreeze is not None:
        what = f"the last {unfreeze} layers with weights of {backbone}"
    else:
        named = B.blocks(base, backbone)
        last = [b.name for b in named[-unfreeze_blocks:]]
        what = (f"the last block of {backbone} ({last[0]})" if len(last) == 1 else
                f"the last {len(last)} blocks of {backbone} ({last[0]} .. {last[-1]})")
    line = f"{what}: {n_layers} layers, {params:,} params (BatchNorm stays frozen)"
    if chosen:
        line += f"; the default {chosen}, change it with --unfreeze-blocks K or --unfreeze N|all"
    return line


def block_depths(base, backbone: str) -> list[int]:
    """Per layer of ``base``: 0 in the last named block, 1 in the one below, ...

    Layers after the last block's end (pooling) belong to the last block,
    layers before the first block (the stem) to the first.
    """
    ends = [b.end for b in B.blocks(base, backbone)]
    if not ends:
        return [0] * len(base.layers)
    depths = []
    for i in range(len(base.layers)):
        below = sum(1 for e in ends if e < i)  # blocks that end before this layer
        depths.append(max(0, len(ends) - 1 - below))
    return depths


def lr_scales(model, base, backbone: str, decay: float) -> dict[str, float]:
    """Discriminative learning rates: ``decay**k`` for the trainable weights of the k-th block from the top.

    Keyed by variable path; the head and everything outside ``base`` train
    at the full rate (no entry).
    """
    if decay == 1:
        return {}
    scales = {}
    for layer, depth in zip(base.layers, block_depths(base, backbone)):
        for w in layer.trainable_weights:
            if depth:
                scales[w.path] = float(decay ** depth)
    return scales


def check_unfreeze(specs, unfreeze=None, unfreeze_blocks=None) -> None:
    """Refuse an ``unfreeze`` or ``unfreeze_blocks`` the head's backbone cannot take, before building it.

    Reads :mod:`featx.unfreeze_table` (counts measured once from the real
    models), for the backbone as the head tapped it: an earlier tap ends
    the backbone there. The message gives the largest valid value and what
    each ``--unfreeze-blocks`` would unfreeze. A backbone the table does not
    know is checked after the build, by :func:`set_trainable`.
    """
    from ..unfreeze_table import unfreezable

    group = [specs[i] for i in one_pass_groups(specs)[0]]  # the backbone that set_trainable works on
    table = unfreezable(group[0].backbone, min(s.cut_blocks for s in group))
    if table is None or (unfreeze is None and unfreeze_blocks is None) or unfreeze == "all":
        return
    name = group[0].backbone
    tapped = " as this head tapped it" if min(s.cut_blocks for s in group) else ""
    if unfreeze is not None and int(unfreeze) > table.total:
        raise FinetuneError(
            f"{name}{tapped} has {table.total} layers with trainable weights (BatchNorm excluded); cannot unfreeze "
            f"the last {unfreeze}. The largest is --unfreeze {table.total} (or all); to unfreeze whole blocks: "
            f"{table.blocks_hint()}.")
    if unfreeze_blocks is not None and int(unfreeze_blocks) > len(table.blocks):
        raise FinetuneError(
            f"{name}{tapped} has {len(table.blocks)} named blocks; cannot unfreeze the last {unfreeze_blocks}. "
            f"The largest is --unfreeze-blocks {len(table.blocks)} (or --unfreeze all); {table.blocks_hint()}.")


def available_blocks(specs) -> int | None:
    """How many named blocks the head's (first) backbone has as it was tapped; None when the table lacks it."""
    from ..unfreeze_table import unfreezable

    group = [specs[i] for i in one_pass_groups(specs)[0]]
    table = unfreezable(group[0].backbone, min(s.cut_blocks for s in group))
    return None if table is None else len(table.blocks)
