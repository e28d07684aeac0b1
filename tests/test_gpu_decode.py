"""--decode cpu|gpu|auto (featx.extraction.gpu_decode), on this CPU.

The nvImageCodec code path runs here on the library's CPU backend
(FEATX_NVIMGCODEC_CPU=1, libjpeg-turbo): header checks, the batch decode, the
CPU fallback for what it cannot decode, the resize, the stacking of a mixed
batch. What needs a GPU (nvJPEG, the DLPack hand-over, the speed) is in the
device check, benchmarks/gpu_check.py.
"""

import importlib.util
import io

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import cli
from featx.decode import read_image
from featx.errors import DataError, FeatxValueError
from featx.extraction import gpu_decode
from featx.extraction.options import ExtractOptions
from featx.extraction.steps import Prepared

from conftest import make_dataset, make_image


def _has_nvimgcodec() -> bool:
    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except (ImportError, ValueError):
        return False


needs_nvimgcodec = pytest.mark.skipif(not _has_nvimgcodec(), reason='needs pip install "featx[gpu-decode]"')


@pytest.fixture
def nv_cpu(monkeypatch):
    """nvImageCodec on its CPU backend, for the code path GPU decoding takes."""
    monkeypatch.setenv(gpu_decode.CPU_BACKEND_ENV, "1")


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth picture with light noise, as benchmarks/gpu_check.py makes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return im ^ rng.integers(0, 16, im.shape, dtype=np.uint8)


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


# (width, height, input size) -> (mean, max) grey levels from Pillow's pixels. Below twice the input
# size both resize the full image with the same filter; from twice up Pillow decodes at a reduced
# DCT scale, which nvImageCodec cannot, and featx averages blocks on the device instead.
TOLERANCE = {(400, 300, 224): (0.5, 1), (40, 32, 32): (0.5, 1), (64, 48, 96): (0.5, 1),
             (448, 336, 224): (1.5, 8), (1000, 750, 224): (1.0, 4), (120, 90, 32): (2.5, 12)}


@needs_nvimgcodec
@pytest.mark.parametrize("w,h,size", list(TOLERANCE))
def test_gpu_path_pixels_are_close_to_pillows(nv_cpu, w, h, size):
    data = _jpeg(_photo(w, h, w))
    gpu = gpu_decode.GpuDecoder("gpu", size)
    assert gpu.active() and gpu.takes(data)
    prep = Prepared(None, None, "sha", None, "compute", data=data)
    gpu.decode([prep])
    got = np.asarray(prep.pixels)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8 and gpu.decoded == 1
    diff = np.abs(got.astype(int) - read_image(data, size))
    mean, most = TOLERANCE[(w, h, size)]
    assert diff.mean() < mean and diff.max() <= most, (diff.mean(), diff.max())


@needs_nvimgcodec
def test_gpu_path_takes_only_what_it_decodes_as_pillow_does(nv_cpu, tmp_path):
    from PIL import Image

    gpu = gpu_decode.GpuDecoder("gpu", 32)
    assert gpu.active()
    rgb = _photo(40, 30, 1)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert gpu.takes(_jpeg(rgb)) and gpu.takes(_jpeg(rgb[..., 0]))  # colour, grayscale
    exif1 = Image.Exif()
    exif1[0x0112] = 1
    assert gpu.takes(_jpeg(rgb, exif=exif1.tobytes()))
    assert not gpu.takes(_jpeg(rgb, exif=exif.tobytes()))  # rotated: Pillow transposes it
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    assert not gpu.takes(cmyk.getvalue()) and not gpu.takes(png.getvalue()) and not gpu.takes(b"\xff\xd8junk")


@needs_nvimgcodec
def test_a_failing_nvimgcodec_call_is_an_error_with_gpu_and_the_cpu_with_auto(nv_cpu):
    data = _jpeg(_photo(40, 32, 2))

    class Broken:
        def decode(self, *a, **k):
            raise RuntimeError("CUDA Runtime failure: out of memory")

    for mode in ("gpu", "auto"):
        gpu = gpu_decode.GpuDecoder(mode, 32)
        assert gpu.active()
        gpu._local.decoder = Broken()
        prep = Prepared(None, None, "sha", None, "compute", data=data)
        if mode == "gpu":
            with pytest.raises(DataError, match="--decode gpu: nvImageCodec failed: CUDA Runtime failure: out of mem"):
                gpu.decode([prep])
        else:
            gpu.decode([prep])
            assert gpu.decoded == 0 and prep.data is None and np.array_equal(prep.pixels, read_image(data, 32))


def _mixed_folder(root):
    """PNGs (make_dataset), JPEGs of three sizes, grayscale, CMYK, EXIF-rotated, truncated, GIF, RGBA PNG."""
    from PIL import Image

    make_dataset(root, per_class=2)
    for i, (w, h) in enumerate([(40, 32), (120, 90), (64, 64)]):
        (root / "cats" / f"photo{i}.jpg").write_bytes(_jpeg(_photo(w, h, i)))
    src = _photo(48, 36, 7)
    (root / "dogs" / "gray.jpg").write_bytes(_jpeg(src[..., 1]))
    Image.fromarray(src).convert("CMYK").save(root / "dogs" / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "dogs" / "rotated.jpg").write_bytes(_jpeg(src, exif=exif.tobytes()))
    (root / "dogs" / "truncated.jpg").write_bytes(_jpeg(_photo(200, 150, 3))[:600])
    Image.fromarray(src).save(root / "dogs" / "anim.gif")
    rgba = np.dstack([src, np.full(src.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(root / "dogs" / "alpha.png")
    return root


@needs_nvimgcodec
def test_gpu_decode_gives_the_same_rows_labels_and_skips_as_cpu(nv_cpu, tmp_path, monkeypatch):
    data = _mixed_folder(tmp_path / "d")
    tensors = []
    real = gpu_decode.GpuDecoder._tensor
    monkeypatch.setattr(gpu_decode.GpuDecoder, "_tensor", lambda self, img: tensors.append(1) or real(self, img))
    kw = dict(weights="none", image_size=32, progress=False)
    cpu = featx.extract(data, "vgg16", cache_dir=tmp_path / "c1", decode="cpu", **kw)
    assert not tensors
    gpu = featx.extract(data, "vgg16", cache_dir=tmp_path / "c2", decode="gpu", **kw)
    # the four plain JPEGs (three colour, one grayscale); nvImageCodec took the truncated one too and failed,
    # so Pillow decided about it; the rest (CMYK, rotated, GIF, PNGs) went through Pillow
    assert len(tensors) == 4
    assert gpu.spec.key == cpu.spec.key and gpu.paths == cpu.paths and gpu.sha256 == cpu.sha256
    assert [p for p, _ in gpu.skipped] == [p for p, _ in cpu.skipped] == [str(data / "dogs" / "truncated.jpg")]
    assert gpu.skipped == cpu.skipped  # Pillow's reason ("truncated image") for both
    a = featx.load_features(data, cache_dir=tmp_path / "c1")
    b = featx.load_features(data, cache_dir=tmp_path / "c2")
    assert list(a.paths) == list(b.paths) and list(a.y) == list(b.y) and a.class_names == b.class_names
    close = np.isclose(a.X, b.X, rtol=0, atol=0.05 * np.abs(a.X).max())
    assert close.all(axis=1).sum() >= len(a) - 2, "only the two JPEGs decoded at a DCT scale may differ more"
    # decode is not part of the key: a GPU run reuses the CPU run's rows
    again = featx.extract(data, "vgg16", cache_dir=tmp_path / "c1", decode="gpu", **kw)
    assert again.computed == 0 and again.reused == cpu.computed


def test_auto_without_a_gpu_decodes_on_the_cpu(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=2)
    make_image(data / "cats" / "x.jpg", size=(40, 32), seed=3)
    monkeypatch.setattr(gpu_decode.GpuDecoder, "decode", lambda self, preps: pytest.fail("decoded on the GPU path"))
    res = featx.extract(data, "vgg16", weights="none", image_size=32, progress=False)  # decode="auto"
    assert res.computed == 5 and not res.skipped


def test_decode_gpu_where_it_cannot_run_is_a_one_line_error(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=1)
    r = CliRunner().invoke(cli, ["extract", "-b", "vgg16", "--weights", "none", "--image-size", "32", "--decode",
                                 "gpu", str(data)])
    why = "nvImageCodec is not installed" if not _has_nvimgcodec() else "no NVIDIA GPU is visible"
    assert r.exit_code == 1 and why in r.output and "--decode gpu" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r'nvImageCodec is not installed \(pip install "featx\[gpu-decode\]"\)'):
        featx.extract(data, "vgg16", weights="none", image_size=32, decode="gpu", progress=False)


def test_decode_option_values():
    assert ExtractOptions.CHOICES["decode"] == ("auto", "cpu", "gpu") and ExtractOptions().decode == "auto"
    with pytest.raises(FeatxValueError, match="decode must be 'auto', 'cpu' or 'gpu'. Received: decode='nvjpeg'"):
        ExtractOptions(decode="nvjpeg")
    with pytest.raises(DataError, match="--engine ray decodes on the CPU only"):
        ExtractOptions(engine="ray", decode="gpu")
    assert ExtractOptions(engine="ray", decode="auto").decode == "auto"
    r = CliRunner().invoke(cli, ["extract", "--decode", "nvjpeg", "x"])
    assert r.exit_code == 2 and "nvjpeg" in r.output
