"""benchmarks/_common.make_jpegs: the one generator of the benchmarks' JPEG sets."""

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import JPEG_KINDS, make_jpegs  # noqa: E402

SIZES = {  # (kind, px): the (width, height) range of its images
    ("noise", 16): ((16, 16), (16, 16)),
    ("small", 8): ((8, 8), (12, 12)),
    ("photo", 24): ((24, 24), (48, 48)),
    ("rolled", 40): ((40, 30), (40, 30)),
}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.jpg"))}


@pytest.mark.parametrize("kind, px", list(SIZES))
def test_each_kind_makes_n_distinct_jpegs_in_its_class_folders(kind, px, tmp_path):
    n = 23  # rolled: more files than pictures, so some repeat a picture
    data = make_jpegs(tmp_path / "set", n, kind, px=px)
    files = digests(data)
    classes = JPEG_KINDS[kind][1]
    assert sorted(files) == sorted(f"c{i % classes}/{i}.jpg" for i in range(n))
    assert len(set(files.values())) == n  # no two files hash alike
    (lo_w, lo_h), (hi_w, hi_h) = SIZES[kind, px]
    for name in files:
        with Image.open(data / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert lo_w <= im.width <= hi_w and lo_h <= im.height <= hi_h, (name, im.size)
    assert (tmp_path / "set.done").exists()


def test_rolled_files_repeat_a_picture_under_their_own_comment(tmp_path):
    data = make_jpegs(tmp_path / "set", 21, "rolled", px=40)
    first, again = data / "c0" / "0.jpg", data / "c2" / "20.jpg"
    assert first.read_bytes() != again.read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert Image.open(again).info["comment"] == b"0/20"


def test_the_same_arguments_give_the_same_files_and_a_set_is_made_once(tmp_path):
    a = digests(make_jpegs(tmp_path / "a", 12, "small", px=8))
    assert digests(make_jpegs(tmp_path / "b", 12, "small", px=8)) == a
    assert digests(make_jpegs(tmp_path / "c", 12, "small", px=8, seed=1)) != a
    (tmp_path / "a" / "c3" / "3.jpg").unlink()
    make_jpegs(tmp_path / "a", 12, "small", px=8)  # finished (a.done): returned as it is
    assert not (tmp_path / "a" / "c3" / "3.jpg").exists()
    # An unfinished set is completed with the files it would have had; a smaller one is extended.
    (tmp_path / "a.done").unlink()
    make_jpegs(tmp_path / "a", 12, "small", px=8)
    assert digests(tmp_path / "a") == a
    (tmp_path / "b").rename(tmp_path / "d")
    assert digests(make_jpegs(tmp_path / "d", 15, "small", px=8)) == digests(make_jpegs(tmp_path / "e", 15, "small", px=8))
