"""featx export, Features.to_arrow/to_pandas: cached features as Parquet, Arrow and NPZ tables."""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import cli
from featx.errors import FeatxError
from featx_test_helpers import make_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TINY = dict(weights="none", image_size=32, progress=False)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A train/val dataset extracted with two taps of one pass (two extractions, two views)."""
    root = tmp_path_factory.mktemp("tables")
    data = make_dataset(root / "data", per_class=3, splits=["train", "val"])
    res = featx.extract(data, "vgg16", taps=[0, 1], cache_dir=root / "cache", **TINY)
    return {"root": root, "data": data, "cache": root / "cache", "names": [e.name for e in res.extractions]}


def features(extracted, **kw):
    return featx.load_features(extracted["data"], cache_dir=extracted["cache"], **kw)


def test_parquet_round_trips_through_pyarrow_and_pandas(extracted, tmp_path):
    out = tmp_path / "f.parquet"
    res = featx.export(out, data=extracted["data"], cache_dir=extracted["cache"], chunk_rows=5)
    f = features(extracted)
    assert (res.rows, res.widths, res.columns) == (12, [512], ["sha256", "path", "split", "label", "embedding"])
    assert pq.ParquetFile(out).num_row_groups == 3  # streamed in chunks of 5 rows
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.field("item", pa.float32(), nullable=False), 512)
    assert not table.schema.field("embedding").nullable
    assert table.equals(f.to_arrow())
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items() if k.startswith(b"featx.")}
    spec = f.spec
    assert (meta["featx.backbone"], meta["featx.weights"], meta["featx.image_size"], meta["featx.pooling"],
            meta["featx.tap"], meta["featx.version"]) == ("vgg16", spec.weights, "32", "avg", "output", featx.__version__)
    assert json.loads(meta["featx.columns"])["embedding"]["settings"] == spec.settings()
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), f.X)
    assert table.column("label").to_pylist() == [f.class_names[i] for i in f.y]
    assert table.column("split").to_pylist() == list(f.split)

    import pandas as pd

    df, expected = pd.read_parquet(out), f.to_pandas()
    pd.testing.assert_frame_equal(df.drop(columns="embedding"), expected.drop(columns="embedding"))
    emb = np.stack(df["embedding"].to_numpy())
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, f.X)
    np.testing.assert_array_equal(np.stack(expected["embedding"].to_numpy()), f.X)


def test_duckdb_counts_and_finds_cosine_nearest_neighbours(extracted, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "f.parquet"
    featx.export(out, data=extracted["data"], cache_dir=extracted["cache"])
    con = duckdb.connect()
    assert con.execute("SELECT count(*), max(len(embedding)) FROM read_parquet(?)", [str(out)]).fetchall() == [(12, 512)]
    f = features(extracted)
    query = f.X[4]
    got = con.execute(
        "SELECT sha256, array_cosine_similarity(CAST(embedding AS FLOAT[512]), CAST(? AS FLOAT[512])) AS sim "
        "FROM read_parquet(?) ORDER BY sim DESC LIMIT 3", [query.tolist(), str(out)]).fetchall()
    cos = f.X @ query / (np.linalg.norm(f.X, axis=1) * np.linalg.norm(query))
    assert [sha for sha, _ in got] == list(f.sha256[np.argsort(-cos)[:3]])
    assert got[0][0] == f.sha256[4]
    np.testing.assert_allclose([s for _, s in got], np.sort(cos)[::-1][:3], rtol=1e-5)


def test_polars_reads_the_fixed_size_embedding(extracted, tmp_path):
    pl = pytest.importorskip("polars")
    out = tmp_path / "f.parquet"
    featx.export(out, data=extracted["data"], cache_dir=extracted["cache"])
    df = pl.read_parquet(out)
    assert df.shape == (12, 5) and df.schema["embedding"] == pl.Array(pl.Float32, 512)
    np.testing.assert_array_equal(df["embedding"].to_numpy(), features(extracted).X)


def test_arrow_and_npz_hold_the_same_rows(extracted, tmp_path):
    f = features(extracted)
    featx.export(tmp_path / "f.arrow", data=extracted["data"], cache_dir=extracted["cache"], chunk_rows=7)
    with pa.ipc.open_file(tmp_path / "f.arrow") as reader:
        assert reader.num_record_batches == 2
        assert reader.read_all().equals(f.to_arrow())
    res = featx.export(tmp_path / "f.npz", data=extracted["data"], cache_dir=extracted["cache"], chunk_rows=5)
    assert res.format == "npz"
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["embedding"], f.X)
        assert list(z["sha256"]) == list(f.sha256) and list(z["split"]) == list(f.split)
        assert list(z["label"]) == [f.class_names[i] for i in f.y]
        assert json.loads(str(z["featx_meta"]))["featx.backbone"] == "vgg16"


def test_taps_become_columns_and_a_split_selects_rows(extracted, tmp_path):
    out = tmp_path / "taps.parquet"
    res = featx.export(out, data=extracted["data"], extraction=extracted["names"], split="val",
                       cache_dir=extracted["cache"])
    assert res.columns[4:] == ["embedding", "embedding_cut1"] and res.rows == 6
    table = pq.read_table(out)
    assert set(table.column("split").to_pylist()) == {"val"}
    for column, name in zip(res.columns[4:], extracted["names"]):
        part = features(extracted, extraction=name, split="val")
        np.testing.assert_array_equal(np.stack(table.column(column).to_numpy(zero_copy_only=False)), part.X)
    cols = json.loads(table.schema.metadata[b"featx.columns"])
    assert cols["embedding_cut1"]["settings"]["cut_blocks"] == 1


def test_cli_export_is_a_thin_shell(extracted, tmp_path):
    runner = CliRunner()
    out = tmp_path / "train.npz"
    r = runner.invoke(cli, ["--cache-dir", str(extracted["cache"]), "export", str(out), "--data",
                            str(extracted["data"]), "--split", "train", "--format", "npz"])
    assert r.exit_code == 0, r.output
    assert "wrote 6 rows (embedding [512])" in r.output
    with np.load(out) as z:
        assert z["embedding"].shape == (6, 512)
    r = runner.invoke(cli, ["--cache-dir", str(extracted["cache"]), "export", str(tmp_path / "x.parquet"),
                            "--split", "test"])
    assert r.exit_code == 1 and "has no test split" in r.output and "Traceback" not in r.output


def test_without_pyarrow_parquet_names_the_extra_and_npz_works(extracted, tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(FeatxError, match=r"pip install 'featx\[arrow\]'"):
        featx.export(tmp_path / "f.parquet", cache_dir=extracted["cache"])
    with pytest.raises(FeatxError, match=r"featx\[arrow\]"):
        features(extracted).to_arrow()
    r = CliRunner().invoke(cli, ["--cache-dir", str(extracted["cache"]), "export", str(tmp_path / "f.parquet")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "featx[arrow]" in r.output
    assert featx.export(tmp_path / "f.npz", cache_dir=extracted["cache"]).rows == 12


def test_importing_featx_and_the_export_command_loads_no_pyarrow():
    import subprocess

    code = ("import sys, featx, featx.tables\n"
            "from click.testing import CliRunner\n"
            "from featx.cli import cli\n"
            "assert CliRunner().invoke(cli, ['export', '--help']).exit_code == 0\n"
            "assert featx.export.__module__ == 'featx.tables'\n"
            "assert 'pyarrow' not in sys.modules, 'pyarrow imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
