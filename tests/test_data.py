"""featx.datasets and featx.decode: dataset discovery in every layout, and image decoding in every mode."""

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, features

import featx.datasets as D
import featx.decode as DEC
from featx.datasets import IMAGE_EXTENSIONS, SPLIT_ALIASES, Dataset, ImageItem, discover, sha256_file
from featx.decode import read_image
from featx.errors import BadImage, DataError, FeatxError, FeatxWarning

from conftest import HYMENOPTERA, needs_hymenoptera


def img(path: Path, size=(16, 12), color=(200, 30, 30), mode="RGB", fmt=None, **save) -> Path:
    """Write a tiny solid image (size is width, height) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt, **save)
    return path


def tree(root: Path, spec: dict) -> Path:
    """Class folders from {"split/class": n_images} (or {"class": n})."""
    for folder, n in spec.items():
        for i in range(n):
            img(root / folder / f"im{i}.png")
    return root


# --------------------------------------------------------------------------- constants and records


def test_every_listed_extension_is_found_and_read(tmp_path):
    """What IMAGE_EXTENSIONS promises: discover takes each (any case) and read_image decodes it."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
           ".tif": "TIFF", ".tiff": "TIFF"}
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        if fmt[ext] == "WEBP" and not features.check("webp"):
            continue
        img(tmp_path / "cls" / f"x{i}{ext.upper() if i % 2 else ext}", fmt=fmt[ext])
    (tmp_path / "cls" / "notes.txt").write_text("x")
    ds = discover(tmp_path)
    assert len(ds) == len(list((tmp_path / "cls").glob("x*")))
    assert all(read_image(it.path).shape == (12, 16, 3) for it in ds.items)
    assert D.is_image("A.JPEG") and not D.is_image("a.txt") and not D.is_image("jpg")


def test_every_split_alias_is_a_split_folder(tmp_path):
    for alias, split in SPLIT_ALIASES.items():
        root = tree(tmp_path / alias, {"train/a": 1, f"{alias.upper()}/a": 1} if split != "train" else {f"{alias}/a": 1})
        assert split in discover(root).splits, alias


def test_dataset_record():
    items = [ImageItem("/a.png", "cat", "train"), ImageItem("/b.png", None, "")]
    ds = Dataset("/x", "classes", items, ["cat", "dog"], [])
    assert ds.splits == ["train", ""]
    assert ds.labels_index().tolist() == [0, -1] and ds.labels_index().dtype.kind == "i"
    with pytest.raises(AttributeError):
        items[0].label = "dog"  # frozen


# --------------------------------------------------------------------------- layouts


def test_classes_layout(tmp_path):
    root = tree(tmp_path / "data", {"dogs": 2, "cats": 3})
    img(root / "cats" / "nested" / "deep" / "x.JPG", fmt="JPEG")  # nested, upper-case extension
    (root / "cats" / "notes.txt").write_text("hi")
    img(root / "cats" / ".hidden.png")
    img(root / ".thumbs" / "t.png")
    img(root / "loose.png")
    (root / "empty").mkdir()

    ds = discover(root)
    assert ds.layout == "classes" and ds.source == str(root.resolve())
    assert ds.class_names == ["cats", "dogs"] and ds.splits == ["train"]
    assert len(ds) == 6 and all(it.split == "train" for it in ds.items)
    assert ds.labels_index().tolist() == [0, 0, 0, 0, 1, 1]
    assert [it.path for it in ds.items] == sorted(it.path for it in ds.items)
    assert all(os.path.isabs(it.path) for it in ds.items)
    assert str(root / "cats" / "nested" / "deep" / "x.JPG") in {it.path for it in ds.items}
    reasons = {Path(p).name: r for p, r in ds.ignored}
    assert reasons == {
        "notes.txt": "not an image extension",
        "loose.png": "image beside the class folders",
        "empty": "empty class folder",
    }  # hidden entries are skipped silently


def test_splits_layout_aliases_and_case(tmp_path):
    root = tree(tmp_path / "data", {"Train/Coast": 2, "Train/forest": 2, "validation/coast": 1,
                                    "validation/Forest": 1, "TEST/COAST": 1, "TEST/forest": 1})
    ds = discover(root)
    assert ds.layout == "splits" and ds.splits == ["train", "val", "test"]
    # The canonical spelling is the first seen in split order (train first).
    assert ds.class_names == ["Coast", "forest"]
    assert [it.split for it in ds.items] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    val = [it for it in ds.items if it.split == "val"]
    assert {(Path(it.path).parent.name, it.label) for it in val} == {("coast", "Coast"), ("Forest", "forest")}
    # Sorted by path within a split: validation/Forest before validation/coast.
    assert ds.labels_index().tolist() == [0, 0, 1, 1, 1, 0, 0, 1]


def test_case_variants_within_a_split_are_one_class(tmp_path):
    root = tree(tmp_path / "data", {"train/Cat": 1, "train/cat": 2, "train/dog": 1, "val/CAT": 1, "val/dog": 1})
    ds = discover(root)
    assert ds.class_names == ["Cat", "dog"]
    assert sum(it.label == "Cat" for it in ds.items if it.split == "train") == 3


def test_splits_with_some_of_the_classes(tmp_path, recwarn):
    """A test/ or val/ split holding only some of train's classes is normal: no error, no warning."""
    root = tree(tmp_path / "data", {"train/ants": 1, "train/bees": 1, "train/wasps": 1, "val/Bees": 1, "test/ants": 2})
    ds = discover(root)
    assert ds.class_names == ["ants", "bees", "wasps"]
    assert ds.class_splits == {"ants": ["train", "test"], "bees": ["train", "val"], "wasps": ["train"]}
    assert ds.labels_index().tolist() == [0, 1, 2, 1, 0, 0]
    assert not [w for w in recwarn if issubclass(w.category, FeatxWarning)]


def test_classes_train_lacks_are_a_warning(tmp_path):
    root = tree(tmp_path / "data", {"train/ants": 1, "train/bees": 1, "val/ants": 1,
                                    "test/ants": 1, "test/bees": 1, "test/wasps": 1, "test/Moths": 1})
    with pytest.warns(FeatxWarning, match=r"test of .* holds classes that train lacks: 'Moths', 'wasps'") as info:
        ds = discover(root)
    assert str(root.resolve()) in str(info[0].message) and len(info) == 1
    assert info[0].filename == __file__  # points at the caller, not inside featx
    assert ds.class_names == ["Moths", "ants", "bees", "wasps"]  # the union, sorted
    assert ds.class_splits["wasps"] == ["test"] and ds.class_splits["ants"] == ["train", "val", "test"]

    no_train = tree(tmp_path / "nt", {"val/a": 1, "test/b": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert discover(no_train).class_splits == {"a": ["val"], "b": ["test"]}


def test_empty_class_folder_does_not_count_as_a_class(tmp_path):
    root = tree(tmp_path / "data", {"train/ants": 1, "train/bees": 1, "val/ants": 1, "val/bees": 1})
    (root / "val" / "wasps").mkdir()
    ds = discover(root)
    assert ds.class_names == ["ants", "bees"]
    assert (str(root / "val" / "wasps"), "empty class folder") in ds.ignored


def test_split_folder_edge_cases(tmp_path):
    root = tree(tmp_path / "a", {"train/ants": 1, "val/ants": 1})
    (root / "test").mkdir()
    (root / "other").mkdir()
    ds = discover(root)
    assert ds.splits == ["train", "val"]
    assert (str(root / "test"), "empty split folder") in ds.ignored
    assert (str(root / "other"), "folder beside the split folders") in ds.ignored

    img(root / "test" / "unlabeled.png")
    with pytest.raises(DataError, match="holds images but no class folders"):
        discover(root)

    both = tree(tmp_path / "b", {"train/ants": 1, "val/ants": 1, "validation/ants": 1})
    with pytest.raises(DataError, match="several folders for the val split"):
        discover(both)


def test_unlabeled_folder(tmp_path):
    root = tmp_path / "pics"
    for name in ("b.png", "a.jpg", "c.webp" if features.check("webp") else "c.bmp"):
        img(root / name)
    (root / "readme.md").write_text("x")
    (root / "empty_sub").mkdir()
    ds = discover(root)
    assert ds.layout == "unlabeled" and ds.class_names == [] and ds.splits == [""]
    assert [Path(it.path).name for it in ds.items][:2] == ["a.jpg", "b.png"]
    assert all(it.label is None and it.split == "" for it in ds.items)
    assert ds.labels_index().tolist() == [-1, -1, -1]
    assert [(Path(p).name, r) for p, r in ds.ignored] == [("readme.md", "not an image extension")]


def test_explicit_files(tmp_path):
    a = img(tmp_path / "a.png")
    folder = tmp_path / "more"
    b = img(folder / "sub" / "b.gif", mode="P", color=3)
    c = img(folder / "c.tiff")
    txt = tmp_path / "n.txt"
    txt.write_text("x")
    ds = discover([c, str(folder), a, txt, a])  # a twice: kept once
    assert ds.layout == "files" and ds.source == "<files>" and ds.class_names == []
    assert [it.path for it in ds.items] == sorted(str(p.resolve()) for p in (a, b, c))
    assert all(it.label is None and it.split == "" for it in ds.items)
    assert (str(txt.resolve()), "not an image extension") in ds.ignored

    single = discover(a)
    assert single.layout == "files" and single.source == str(a.resolve()) and len(single) == 1

    with pytest.raises(DataError, match="does not exist"):
        discover([a, tmp_path / "nope.png"])
    with pytest.raises(DataError, match="No images among"):
        discover([txt])
    with pytest.raises(DataError, match="neither a folder, a CSV file nor an image"):
        discover(txt)


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        discover(tmp_path / "missing")
    assert "missing" in str(info.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="No images found in"):
        discover(tmp_path / "empty")
    assert issubclass(DataError, FeatxError)


def test_csv_with_split_column(tmp_path):
    root = tree(tmp_path / "d", {"x": 6})
    absolute = root / "x" / "im5.png"
    (root / "labels.csv").write_text(
        "Path,Label,Split\n"
        "x/im0.png,cat,Training\n"
        "x/im1.png,dog,train\n"
        "x/im2.png,Cat,valid\n"
        "x/im3.png,dog,VAL\n"
        "x/im4.png,cat,TEST\n"
        f"{absolute},DOG,test\n"
        "x/im0.png,dog,train\n"
        "x/gone.png,cat,train\n"
        "\n"
    )
    ds = discover(root / "labels.csv")
    assert ds.layout == "csv" and ds.source == str((root / "labels.csv").resolve())
    assert ds.class_names == ["cat", "dog"] and ds.splits == ["train", "val", "test"]
    assert [(Path(it.path).name, it.label, it.split) for it in ds.items] == [
        ("im0.png", "cat", "train"), ("im1.png", "dog", "train"),
        ("im2.png", "cat", "val"), ("im3.png", "dog", "val"),
        ("im4.png", "cat", "test"), ("im5.png", "dog", "test"),
    ]
    assert ds.ignored == [
        (str(root / "x" / "im0.png"), "duplicate row"),
        (str(root / "x" / "gone.png"), "file not found"),
    ]


def test_csv_without_split_column_and_unlabeled(tmp_path):
    root = tree(tmp_path / "d", {"x": 3})
    (root / "l.csv").write_text("path,label\nx/im2.png,b\nx/im0.png,a\n./x/../x/im1.png,b\n")
    ds = discover(root / "l.csv")
    assert ds.splits == ["train"] and ds.class_names == ["a", "b"]
    assert [Path(it.path).name for it in ds.items] == ["im0.png", "im1.png", "im2.png"]
    assert str(root / "x" / "im1.png") in {it.path for it in ds.items}  # normalised

    (root / "u.csv").write_text("path\nx/im1.png\nx/im0.png\n")
    ds = discover(root / "u.csv")
    assert ds.layout == "csv" and ds.class_names == [] and ds.labels_index().tolist() == [-1, -1]
    assert all(it.label is None and it.split == "" for it in ds.items)


def test_csv_errors(tmp_path):
    tree(tmp_path, {"x": 2})
    cases = {
        "file,label\nx/im0.png,a\n": "needs a 'path' column",
        "": "needs a 'path' column",
        "path,label\nx/im0.png,a\nx/im1.png,\nx/im0.png, \n": r"empty label \(lines 3, 4\)",
        "path,label\nx/a.png,a\nx/b.png,b\n": "None of the 2 files listed",
        "path,label,split\nx/im0.png,a,holdout\n": "line 2: unknown split 'holdout'",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"{i}.csv").write_text(text)
        with pytest.raises(DataError, match=message):
            discover(tmp_path / f"{i}.csv")
    (tmp_path / "bad.csv").write_bytes(b"path,label\n\xff\xfe\x00,a\n")
    with pytest.raises(DataError, match="Cannot read CSV"):
        discover(tmp_path / "bad.csv")


def test_csv_splits_with_different_classes(tmp_path):
    tree(tmp_path, {"x": 4})
    (tmp_path / "l.csv").write_text("path,label,split\nx/im0.png,a,train\nx/im1.png,b,train\nx/im2.png,a,val\n"
                                     "x/im3.png,c,test\n")
    with pytest.warns(FeatxWarning, match="test of .* holds classes that train lacks: 'c'"):
        ds = discover(tmp_path / "l.csv")
    assert ds.class_names == ["a", "b", "c"] and ds.class_splits == {"a": ["train", "val"], "b": ["train"], "c": ["test"]}


def test_csv_label_column_misspelt_warns_with_the_columns(tmp_path):
    tree(tmp_path, {"x": 2})
    (tmp_path / "l.csv").write_text("path,lable\nx/im0.png,a\nx/im1.png,b\n")
    with pytest.warns(FeatxWarning, match=r"no 'label' column, so its images are unlabeled; columns found: 'path', 'lable'"):
        ds = discover(tmp_path / "l.csv")
    assert ds.class_names == [] and len(ds) == 2
    (tmp_path / "p.csv").write_text("path\nx/im0.png\n")  # a plain list of paths: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(discover(tmp_path / "p.csv")) == 1


def test_csv_missing_files_and_broken_links_are_named_missing(tmp_path):
    tree(tmp_path, {"x": 1})
    os.symlink(tmp_path / "x" / "gone.png", tmp_path / "x" / "link.png")
    (tmp_path / "l.csv").write_text("path,label\nx/im0.png,a\nx/nope.png,a\nx/link.png,b\n")
    ds = discover(tmp_path / "l.csv")
    assert dict(ds.ignored) == {
        str(tmp_path / "x" / "nope.png"): "file not found",
        str(tmp_path / "x" / "link.png"): "file not found (broken symbolic link)",
    }


@pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "mkfifo"), reason="POSIX only")
def test_symlinks_and_special_files(tmp_path):
    root = tree(tmp_path / "data", {"ants": 1, "bees": 1})
    os.symlink(root, root / "ants" / "loop")  # a link back to an ancestor
    os.symlink(tmp_path / "nowhere.png", root / "bees" / "broken.png")
    os.mkfifo(root / "bees" / "pipe.png")  # reading it would block forever
    ds = discover(root)
    # The walk ends: ants/loop is the root, whose ants/ was already scanned.
    assert sorted(os.path.relpath(it.path, root) for it in ds.items) == [
        "ants/im0.png", "ants/loop/bees/im0.png", "bees/im0.png"]
    reasons = {os.path.relpath(p, root): r for p, r in ds.ignored}
    assert reasons["bees/broken.png"] == "file not found (broken symbolic link)"
    assert reasons["bees/pipe.png"] == "not a regular file"
    assert reasons["ants/loop/ants"] == "folder already scanned (symbolic link)"

    fifo = discover([root / "bees" / "pipe.png", root / "bees" / "im0.png"])
    assert len(fifo) == 1 and fifo.ignored == [(str(root / "bees" / "pipe.png"), "not a regular file")]

    ds = discover(root, follow_symlinks=False)
    assert len(ds) == 2
    assert (str(root / "ants" / "loop"), "symbolic link not followed") in ds.ignored


@needs_hymenoptera
def test_real_dataset():
    ds = discover(HYMENOPTERA)
    assert ds.layout == "splits" and ds.class_names == ["ants", "bees"] and ds.splits == ["train", "val"]
    assert sum(it.split == "train" for it in ds.items) == 245
    assert sum(it.split == "val" for it in ds.items) == 153 and len(ds) == 398
    assert ds.ignored == []
    # Both odd files decode: a 300x300 palette GIF and a small JPEG with a .jpeg extension.
    gif = read_image(HYMENOPTERA / "train" / "ants" / "imageNotFound.gif")
    assert gif.shape == (300, 300, 3) and gif.dtype == np.uint8
    assert read_image(HYMENOPTERA / "train" / "ants" / "formica.jpeg").shape == (130, 193, 3)
    assert read_image(HYMENOPTERA / "train" / "ants" / "formica.jpeg", 224).shape == (224, 224, 3)


# --------------------------------------------------------------------------- decoding


FORMATS = ["JPEG", "PNG", "BMP", "TIFF"] + (["WEBP"] if features.check("webp") else [])


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_decode(tmp_path, fmt):
    path = img(tmp_path / f"x.{fmt.lower()}", size=(24, 10), color=(10, 200, 60), fmt=fmt)
    out = read_image(path)
    assert out.shape == (10, 24, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - [10, 200, 60]).max() <= 8  # lossy formats come close
    assert np.array_equal(read_image(path.read_bytes()), out)
    assert read_image(str(path), 7).shape == (7, 7, 3)
    assert read_image(path, (5, 9)).shape == (5, 9, 3)  # (height, width)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 8), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    out = read_image(tmp_path / "a.gif")
    assert out.shape == (8, 12, 3) and (out == [255, 0, 0]).all()


def test_exif_orientation(tmp_path, monkeypatch):
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "r.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (400, 200, 3)
    assert out[10, 100, 0] > 200 and out[-10, 100, 0] < 50  # the red half is now on top

    # The JPEG draft is asked for in stored (unrotated) pixels, so a
    # non-square target never decodes below its size.
    from PIL import JpegImagePlugin

    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    small = read_image(path, (100, 20), decoder="pillow")  # height 100, width 20
    assert calls == [("RGB", (100, 20))]  # (width, height) of the stored image
    assert small.shape == (100, 20, 3) and small[5, 10, 0] > 200 and small[-5, 10, 0] < 50
    np.testing.assert_array_equal(read_image(path, (100, 20)), small)  # simplejpeg, when installed


def test_large_jpeg_drafted_close_to_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((800, 600), Image.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=95)
    fast = read_image(tmp_path / "big.jpg", 32).astype(int)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BILINEAR)).astype(int)
    assert np.abs(fast - full).mean() < 4


def test_transparency_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]  # fully transparent black -> white
    assert 120 <= out[0, 1, 0] <= 135  # half-transparent black over white

    Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[1, 1].tolist() == [255, 255, 255]

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    out = read_image(tmp_path / "p.png")
    assert out[0, 0].tolist() == [0, 255, 0] and out[2, 2].tolist() == [255, 255, 255]


def test_other_modes(tmp_path):
    img(tmp_path / "cmyk.tiff", mode="CMYK", color=(0, 0, 0, 0))
    assert (read_image(tmp_path / "cmyk.tiff") == 255).all()
    img(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))
    red = read_image(tmp_path / "cmyk.jpg")
    assert red.shape == (12, 16, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60

    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((1, 1), 1)
    bits.save(tmp_path / "b.bmp")
    out = read_image(tmp_path / "b.bmp")
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]

    img(tmp_path / "l.png", mode="L", color=77)
    assert (read_image(tmp_path / "l.png") == 77).all()

    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "f.tiff")
    assert read_image(tmp_path / "f.tiff")[0, :, 0].tolist() == [0, 128, 255]


def test_sixteen_bit_keeps_dynamic_range(tmp_path):
    arr = np.array([[0, 32768, 65535, 257 * 10]], np.uint16)
    for fmt in ("PNG", "TIFF"):
        Image.fromarray(arr).save(tmp_path / f"x.{fmt}", fmt)
        assert Image.open(tmp_path / f"x.{fmt}").mode in ("I;16", "I")  # Pillow 10 opens a 16-bit PNG as I
        out = read_image(tmp_path / f"x.{fmt}")
        assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 128, 255, 10]
    Image.fromarray(arr.astype(np.int32), "I").save(tmp_path / "i.tiff")
    assert read_image(tmp_path / "i.tiff")[0, :, 1].tolist() == [0, 128, 255, 10]


def test_bad_images(tmp_path, monkeypatch):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    expected = {"empty.png": "empty file", "text.jpg": "not an image", "cut.jpg": "truncated image"}
    for name, reason in expected.items():
        with pytest.raises(BadImage) as info:
            read_image(tmp_path / name, 32)
        assert str(info.value) == reason
    with pytest.raises(BadImage, match="^empty file$"):
        read_image(b"")
    with pytest.raises(BadImage, match="^unreadable: Is a directory$"):
        read_image(tmp_path)
    with pytest.raises(BadImage, match="^unreadable: No such file or directory$"):
        read_image(tmp_path / "missing.png")

    # Root reads chmod-000 files, so the permission error is injected at open().
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(DEC, "open", denied, raising=False)
    with pytest.raises(BadImage, match="^unreadable: Permission denied$"):
        read_image(tmp_path / "text.jpg")


def test_decompression_bomb(tmp_path, monkeypatch):
    path = img(tmp_path / "big.png", size=(20, 10))
    monkeypatch.setattr(DEC, "MAX_PIXELS", 199)
    with pytest.raises(BadImage, match=r"^decompression bomb \(20 x 10 pixels\)$"):
        read_image(path)
    monkeypatch.setattr(DEC, "MAX_PIXELS", 200)
    assert read_image(path).shape == (10, 20, 3)

    # Pillow's own limits, where set lower than ours, end the same way.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(BadImage, match=r"^decompression bomb \(200 pixels\)$"):
        read_image(path)  # DecompressionBombError: over twice Pillow's limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadImage, match=r"^decompression bomb \(200 pixels\)$"):
            read_image(path)  # DecompressionBombWarning raised as an error


def test_unexpected_errors_become_bad_image(tmp_path, monkeypatch):
    path = img(tmp_path / "x.png")

    def boom(image):
        raise RuntimeError("decoder\nexploded")

    monkeypatch.setattr(DEC, "_to_rgb", boom)
    with pytest.raises(BadImage, match="^cannot decode: RuntimeError: decoder exploded$"):
        read_image(path)


def test_argument_checks(tmp_path):
    path = img(tmp_path / "x.png")
    for size in (0, (3, 0), (1, 2, 3), "8"):
        with pytest.raises(ValueError, match="size"):
            read_image(path, size)
    with pytest.raises(ValueError, match="resample"):
        read_image(path, 4, resample="cubic")
    with pytest.raises(TypeError):
        read_image(3)  # not a file descriptor
    assert read_image(path, np.int64(5), resample="nearest").shape == (5, 5, 3)
    assert read_image(path).flags.writeable


def test_threads_agree_and_leave_warnings_alone(tmp_path):
    paths = [img(tmp_path / f"{i}.jpg", size=(40 + i, 30), color=(i * 9, 100, 200)) for i in range(24)]
    filters = list(warnings.filters)
    serial = [read_image(p, 16) for p in paths]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda p: read_image(p, 16), paths))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))
    assert warnings.filters == filters


def test_sha256_file(tmp_path):
    data = os.urandom(3 << 20) + b"tail"  # several 1 MiB chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(str(tmp_path / "e")) == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------- simplejpeg (the "fast" extra) against Pillow


def _jpeg_bytes(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


XMP_ORIENTATION_6 = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _jpeg_cases():
    rng = np.random.default_rng(3)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).resize((500, 375), Image.BICUBIC))
    cases = {
        "420": _jpeg_bytes(base, quality=90),
        "422": _jpeg_bytes(base, subsampling=1),
        "444": _jpeg_bytes(base, subsampling=0),
        "progressive": _jpeg_bytes(base, progressive=True),
        "gray": _jpeg_bytes(base[..., 0]),
        "gray-progressive": _jpeg_bytes(base[..., 0], progressive=True),
        "tiny": _jpeg_bytes(base[:5, :7]),
        # Orientation in XMP only (tiff:Orientation, no Exif): Pillow applies it.
        "xmp6": _jpeg_bytes(base, xmp=XMP_ORIENTATION_6),
    }
    for mode in ("CMYK", "YCbCr"):
        buf = io.BytesIO()
        Image.fromarray(base).convert(mode).save(buf, "JPEG")
        cases[mode.lower()] = buf.getvalue()
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        cases[f"exif{o}"] = _jpeg_bytes(base, exif=exif.tobytes())
    return cases


@pytest.mark.parametrize("size", [None, 1, 32, (40, 90), 128, 224, 600])
def test_simplejpeg_gives_pillows_pixels(size):
    pytest.importorskip("simplejpeg")
    for name, data in _jpeg_cases().items():
        fast, slow = read_image(data, size), read_image(data, size, decoder="pillow")
        # The same pixels, bit for bit: the cache key does not name the decoder.
        np.testing.assert_array_equal(fast, slow, err_msg=name)
        used = DEC._read_jpeg_turbo(DEC._simplejpeg(), data, DEC._target_size(size), "bilinear") is not None
        assert used == (name != "cmyk"), name  # CMYK goes to Pillow


def test_an_xmp_oriented_jpeg_is_turned_by_both_decoders():
    data = _jpeg_cases()["xmp6"]
    with Image.open(io.BytesIO(data)) as img:
        assert "exif" not in img.info  # no Exif at all: the orientation is in the XMP packet
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert upright.shape == (500, 375, 3)
    for decoder in ("auto", "pillow"):
        np.testing.assert_array_equal(read_image(data, decoder=decoder), upright, err_msg=decoder)


def test_a_simplejpeg_that_decodes_otherwise_is_not_used(monkeypatch):
    simplejpeg = pytest.importorskip("simplejpeg")
    decode = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: decode(*a, **k) // 2 * 2)  # another IDCT
    DEC._simplejpeg.cache_clear()
    try:
        assert DEC._simplejpeg() is None  # Pillow decodes every JPEG in this process
        monkeypatch.undo()
        DEC._simplejpeg.cache_clear()
        assert DEC._simplejpeg() is simplejpeg
    finally:
        DEC._simplejpeg.cache_clear()


def test_simplejpeg_path_reports_bad_jpegs_as_pillow_does():
    pytest.importorskip("simplejpeg")
    good = _jpeg_bytes(np.full((64, 64, 3), 128, np.uint8))
    for data in (good[: len(good) // 2], good[:2] + b"\x00" * 40):
        with pytest.raises(BadImage) as fast:
            read_image(data, 32)
        with pytest.raises(BadImage) as slow:
            read_image(data, 32, decoder="pillow")
        assert str(fast.value) == str(slow.value)


def test_without_simplejpeg_pillow_decodes(monkeypatch):
    data = _jpeg_bytes(np.full((64, 48, 3), 200, np.uint8))
    monkeypatch.setattr(DEC, "_simplejpeg", lambda: None)
    assert read_image(data, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="decoder"):
        read_image(data, 16, decoder="turbo")


def test_jpeg_orientation_detection_walks_markers():
    from featx.decode import _jpeg_may_be_oriented

    exif = Image.Exif()
    exif[0x0112] = 6
    plain = _jpeg_bytes(np.zeros((16, 16, 3), np.uint8))
    assert not _jpeg_may_be_oriented(plain)
    assert _jpeg_may_be_oriented(_jpeg_bytes(np.zeros((16, 16, 3), np.uint8), exif=exif.tobytes()))
    assert _jpeg_may_be_oriented(_jpeg_bytes(np.zeros((16, 16, 3), np.uint8), xmp=XMP_ORIENTATION_6))
    assert _jpeg_may_be_oriented(plain[:2] + b"junk")  # odd layout: Pillow decides
