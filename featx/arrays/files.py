"""``.npy`` and ``.npz`` files: images memory-mapped where stored uncompressed (``np.savez``), labels read."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .checks import ArrayError

_NPZ_KEYS = {"x_train": "train", "x_val": "val", "x_valid": "val", "x_validation": "val", "x_test": "test", "x": ""}


def open_file(path: str, log) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Data path does not exist: {path}.")
    if p.suffix.lower() == ".npy":
        try:
            x = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArrayError(f"Cannot read {p} as a NumPy array: {exc}") from None
        if log:
            log(f"{p.name}: images {tuple(x.shape)} {x.dtype} (unlabelled)")
        return {"": (x, None)}
    return _open_npz(p, log)


def _open_npz(path: Path, log) -> dict:
    """Splits of an ``.npz``: images memory-mapped where stored uncompressed, labels read."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArrayError(f"Cannot read {path} as an .npz file: {exc}") from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        found = [k for k in _NPZ_KEYS if k in members]
        if not found:
            raise ArrayError(f"{path} holds {', '.join(sorted(members)) or 'no arrays'}; expected x_train, y_train, "
                             "x_test, y_test (and x_val, y_val), or x, y.")
        if "x" in found and len(found) > 1:
            found.remove("x")
        splits, said = {}, []
        with np.load(path, allow_pickle=False) as npz:
            for key in found:
                sp = _NPZ_KEYS[key]
                if sp in splits:
                    raise ArrayError(f"{path} has two arrays for the {sp} split; keep one of x_val, x_valid.")
                x = _member(path, zf, zf.getinfo(members[key]), npz, key)
                ykey = "y" + key[1:]
                y = npz[ykey] if ykey in members else None
                splits[sp] = (x, y)
                said.append(f"{key} {tuple(x.shape)} {x.dtype}" + (f", {ykey}" if y is not None else ""))
    if log:
        extra = sorted(set(members) - set(found) - {"y" + k[1:] for k in found})
        log(f"{path.name}: " + "; ".join(said) + (f" (ignored: {', '.join(extra)})" if extra else ""))
    return splits


def _member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, npz, key: str):
    """An ``.npz`` member as a read-only memory map when stored uncompressed (``np.savez``).

    ``np.load`` would read the whole member; a compressed one
    (``np.savez_compressed``) has to be, and is.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return npz[key]
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(fh))
        offset = fh.tell()
    if dtype.hasobject:
        raise ArrayError(f"{key} in {path} is an object array; pass a numeric array of images.")
    if 0 in shape:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
