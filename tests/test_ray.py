"""`featx extract --engine ray`: the same cache as a local run, resumable, retry-safe.

One Ray instance serves the whole session: 3 CPUs and 2 GPUs that Ray is
told of but this machine need not have (Ray sets each GPU actor's
CUDA_VISIBLE_DEVICES as on a real box; the actor finds no such GPU and
computes on the CPU). Each Ray run starts its embedding actors afresh,
which costs a framework import, so the runs here are few and each test
checks several things.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import cli

from conftest import make_dataset, make_image

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=4, progress=False)
CLI_TINY = ["extract", "-q", "-b", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "4"]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # Ray's files live in this session's temp folder, reached through a short link: its unix
    # socket paths (session dir + sockets/plasma_store) must stay under 107 bytes.
    short = Path("/tmp") / f"fxray-{os.getpid()}"
    if short.is_symlink():
        short.unlink()
    short.symlink_to(tmp_path_factory.mktemp("ray"), target_is_directory=True)
    # Workers (of this driver and of the CLI drivers started below) must import this checkout's featx.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    started = not ray.is_initialized()
    if started:
        # 3 CPUs: two GPU actors hold one each and the decoding tasks need one. Ray refuses to declare
        # GPUs that conftest's CUDA_VISIBLE_DEVICES=-1 hides, so its workers start without that variable
        # (an actor that asked for no GPU, or was given one this machine lacks, hides them itself).
        hidden = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        try:
            ray.init(num_cpus=3, num_gpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                     _temp_dir=str(short))
        finally:
            if hidden is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = hidden
    yield ray
    if started:
        ray.shutdown()
    short.unlink()


def shard_rows(extraction) -> list[str]:
    """Every sha256 of every shard, duplicates included."""
    out = []
    for shard in extraction.shards():
        with h5py.File(shard) as f:
            out += [x.decode() for x in f["sha256"][...]]
    return out


def add_bad_files(data: Path) -> None:
    (data / "cats" / "empty.jpg").write_bytes(b"")
    (data / "cats" / "text.jpg").write_bytes(b"hello, I am not a picture\n" * 10)
    jpg = make_image(data / "dogs" / "trunc.jpg", size=(64, 64), fmt="JPEG")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (data / "dogs" / "copy.png").write_bytes((data / "dogs" / "dogs_0.png").read_bytes())


@pytest.mark.slow
def test_ray_and_local_runs_give_the_same_cache_and_reruns_compute_only_new_images(ray_cluster, tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=6)
    add_bad_files(data)
    local = featx.extract(data, cache_dir=tmp_path / "local", **TINY)
    remote = featx.extract(data, cache_dir=tmp_path / "ray", engine="ray", **TINY)
    for res in (local, remote):
        assert (res.total, res.computed, res.reused, len(res.skipped)) == (16, 12, 1, 3)
    assert sorted(remote.skipped) == sorted(local.skipped)  # the same files, the same reasons
    assert remote.extraction.name == local.extraction.name
    a = featx.load_features(data, cache_dir=tmp_path / "local")
    b = featx.load_features(data, cache_dir=tmp_path / "ray")
    assert list(a.paths) == list(b.paths) and list(a.sha256) == list(b.sha256) and (a.y == b.y).all()
    np.testing.assert_allclose(b.X, a.X, rtol=1e-5, atol=1e-5)
    rows = shard_rows(remote.extraction)
    assert len(rows) == len(set(rows)) == 12
    assert not list((tmp_path / "ray").rglob(".staged-*")) and not list((tmp_path / "ray").rglob(".probe-*"))

    # A warm rerun sends nothing to Ray.
    def boom(*a, **k):
        raise AssertionError("a warm rerun went to Ray")

    with monkeypatch.context() as m:
        m.setattr("featx.extraction.engines.ray.RayEngine.compute", boom)
        warm = featx.extract(data, cache_dir=tmp_path / "ray", engine="ray", **TINY)
    assert (warm.computed, warm.reused, sorted(warm.skipped)) == (0, 13, sorted(local.skipped))

    # New images: only they are computed, through the CLI.
    make_image(data / "cats" / "new_cat.png", color=(220, 40, 40), seed=99)
    make_image(data / "dogs" / "new_dog.png", color=(40, 40, 220), seed=98)
    out = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "ray"), *CLI_TINY, "--engine", "ray", str(data)])
    assert out.exit_code == 0, out.output
    assert "18 images, 2 computed, 13 reused, 3 skipped" in out.output
    assert f"skipped {data / 'cats' / 'empty.jpg'}: empty file" in out.output
    assert len(featx.load_features(data, cache_dir=tmp_path / "ray")) == 15


@pytest.mark.slow
def test_a_lost_actor_is_retried_without_duplicate_rows(ray_cluster, tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=10)
    marker = tmp_path / "actor-died"
    monkeypatch.setenv("FEATX_RAY_SHARD_ROWS", "4")
    monkeypatch.setenv("FEATX_RAY_FAULT", f"2:{marker}")  # exit after writing the 2nd call's shard, once
    res = featx.extract(data, cache_dir=tmp_path / "ray", engine="ray", workers=1, **TINY)
    assert marker.exists()
    assert (res.computed, res.reused, res.skipped) == (20, 0, [])
    rows = shard_rows(res.extraction)
    assert len(rows) == len(set(rows)) == 20
    local = featx.extract(data, cache_dir=tmp_path / "local", **TINY)
    np.testing.assert_allclose(
        featx.load_features(data, cache_dir=tmp_path / "ray").X, featx.load_features(data, cache_dir=tmp_path / "local").X,
        rtol=1e-5, atol=1e-5,
    )
    assert local.computed == 20



def placement(lines: list[str]) -> tuple[dict[str, tuple[str, int]], set[str]]:
    """What the --verbose line of a Ray run says: {actor pid: (its CUDA_VISIBLE_DEVICES, rows it embedded)}
    and the GPUs the decoding tasks held."""
    (line,) = [x for x in lines if x.startswith("featx: Ray decoded in")]
    held = set(re.search(r"GPUs held: ([^)]*)\)", line).group(1).split(", "))
    actors = {pid: (devices, int(n)) for pid, devices, n in
              re.findall(r"pid=(\d+) CUDA_VISIBLE_DEVICES=(\S+)(?: \(no such GPU here: CPU\))? \((\d+) images\)", line)}
    assert len(actors) == int(re.search(r"(\d+) actors embedded", line).group(1)), line
    return actors, held


@pytest.mark.slow
def test_one_actor_per_gpu_writes_the_rows_of_one_actor_and_of_a_local_run(ray_cluster, tmp_path, monkeypatch):
    from featx.extraction.engines import ray as ray_engine

    if ray_engine.visible_gpus({}):
        pytest.skip("Ray's GPUs here are declared, not real: a machine with GPUs would compute on them")
    data = make_dataset(tmp_path / "data", per_class=6, splits=["train", "val"])
    add_bad_files(data / "train")
    # GPUs asked for but fewer than one actor's: a one-line error, before any actor starts.
    out = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "none"), *CLI_TINY, "--engine", "ray",
                                   "--num-gpus-per-worker", "3", str(data)])
    assert out.exit_code == 1 and out.output.strip().count("\n") == 0, out.output
    assert "The Ray cluster has 2 GPUs, fewer than one worker's num_gpus_per_worker=3." in out.output

    monkeypatch.setenv("FEATX_RAY_SHARD_ROWS", "4")
    monkeypatch.setattr(ray_engine, "DECODE_ROWS", 4)  # several decoding blocks, so that each actor may get some
    monkeypatch.setenv("FEATX_VERBOSE", "1")  # the driver reports which actor embedded what
    kw = dict(TINY, precision="float32")  # precision "auto" is mixed float16 for actors that ask for GPUs
    local = featx.extract(data, cache_dir=tmp_path / "local", **kw)
    want = featx.load_features(data, cache_dir=tmp_path / "local")
    seen = {}
    for name, workers in (("one", 1), ("two", None)):  # None: one actor per GPU Ray has
        log = []
        # Ray Data gives a block to an idle actor: one fast actor could take them all. Each actor's
        # first call waits here until every actor has had one.
        (tmp_path / f"meet-{name}").mkdir()
        monkeypatch.setenv("FEATX_RAY_MEET", f"{workers or 2}:{tmp_path / f'meet-{name}'}")
        res = featx.extract(data, cache_dir=tmp_path / name, engine="ray", num_gpus_per_worker=1, workers=workers,
                            log=log.append, **kw)
        assert (res.computed, res.reused, sorted(res.skipped)) == (local.computed, local.reused, sorted(local.skipped))
        assert res.extraction.name == local.extraction.name
        rows = shard_rows(res.extraction)
        assert len(rows) == len(set(rows)) == local.computed and set(rows) == set(shard_rows(local.extraction))
        got = featx.load_features(data, cache_dir=tmp_path / name)
        for col in ("paths", "sha256", "y", "split"):
            assert list(getattr(got, col)) == list(getattr(want, col)), col
        np.testing.assert_allclose(got.X, want.X, rtol=1e-5, atol=1e-5)
        actors, held = placement(log)
        assert held == {"none"}  # the decoding tasks asked for no GPU
        assert sum(n for _, n in actors.values()) == res.total - len(res.skipped)  # a copy in another call: twice
        # Ray's GPUs are declared, not real: the actors computed on the CPU and the driver says so
        assert any("were given a GPU this machine does not have and computed on the CPU" in x for x in log)
        seen[name] = actors
    assert len(seen["one"]) == 1
    assert len(seen["two"]) == 2 and all(n > 0 for _, n in seen["two"].values()), seen
    assert sorted(devices for devices, _ in seen["two"].values()) == ["0", "1"]  # one GPU each, from Ray


@pytest.mark.parametrize("gpus, per_worker, actors", [(2, 1, 2), (2, 0.5, 4), (1, 0.1, 10), (0.6, 0.2, 3), (1, 1 / 3, 3),
                                                      (8, 2, 4), (0, 0, 1)])
def test_default_actors_are_one_per_gpus_per_worker(gpus, per_worker, actors):
    from featx.extraction.engines.ray import _default_actors

    class Cluster:
        def cluster_resources(self):
            return {"CPU": 4.0, "GPU": float(gpus)}

    assert _default_actors(Cluster(), per_worker) == actors


@pytest.mark.parametrize("gpus, per_worker", [(0, 1), (1, 2), (0.5, 1)])
def test_more_gpus_per_worker_than_the_cluster_has_is_an_error(gpus, per_worker):
    from featx.errors import DataError
    from featx.extraction.engines.ray import _default_actors

    class Cluster:
        def cluster_resources(self):
            return {"CPU": 4.0, "GPU": float(gpus)} if gpus else {"CPU": 4.0}

    with pytest.raises(DataError, match=rf"has {gpus:g} GPUs, fewer than one worker's num_gpus_per_worker={per_worker:g}"):
        _default_actors(Cluster(), per_worker)


@pytest.mark.parametrize("value, present, visible", [
    (None, 2, ["0", "1"]), ("", 2, []), ("-1", 2, []), ("1", 2, ["1"]), ("1", 1, []), ("0,3,1", 2, ["0"]),
    ("GPU-5e1b", 1, ["GPU-5e1b"]), ("GPU-5e1b", 0, []), ("0", 0, []),
])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(value, present, visible):
    from featx.extraction.engines.ray import visible_gpus

    assert visible_gpus({} if value is None else {"CUDA_VISIBLE_DEVICES": value}, present) == visible


def test_an_actor_keeps_a_gpu_that_exists_and_hides_one_that_does_not():
    from featx.extraction.engines.ray import claim_devices

    env = {"CUDA_VISIBLE_DEVICES": "1"}
    assert claim_devices(1, env, present=2) == (True, f"pid={os.getpid()} CUDA_VISIBLE_DEVICES=1")
    assert env == {"CUDA_VISIBLE_DEVICES": "1"}  # a whole GPU: the framework may take its memory
    env = {"CUDA_VISIBLE_DEVICES": "1"}  # Ray's second GPU on a machine with one (or none): the CPU, said so
    assert claim_devices(1, env, present=1) == (False, f"pid={os.getpid()} CUDA_VISIBLE_DEVICES=1 (no such GPU here: CPU)")
    assert env == {"CUDA_VISIBLE_DEVICES": ""}
    env = {}  # a CPU actor on a GPU node takes no GPU
    assert claim_devices(0, env, present=2) == (False, f"pid={os.getpid()} CUDA_VISIBLE_DEVICES=-")
    assert env == {"CUDA_VISIBLE_DEVICES": ""}
    env = {"CUDA_VISIBLE_DEVICES": "0"}  # two actors on one GPU: neither reserves all its memory
    assert claim_devices(0.5, env, present=1)[0] is True
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}


def _released(ray, limit: float = 120.0) -> None:
    """Wait until Ray has every CPU back: the killed driver's actors and tasks are gone.

    Ray frees an actor's CPU once the actor's process is dead, so no staged
    shard is written after this returns.
    """
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + limit
    while ray.available_resources().get("CPU", 0) < total:
        assert time.monotonic() < deadline, f"Ray still holds CPUs of a dead driver: {ray.available_resources()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_ray_driver_then_local_rerun_gives_a_complete_duplicate_free_cache(ray_cluster, tmp_path):
    data = make_dataset(tmp_path / "data", per_class=200, size=(48, 48))
    cache_dir = tmp_path / "cache"
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "FEATX_RAY_SHARD_ROWS": "8", "FEATX_FLUSH_SECONDS": "0"}
    cmd = [sys.executable, "-m", "featx.cli", "--cache-dir", str(cache_dir), *CLI_TINY,
           "--engine", "ray", "--address", address, str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 150
    while time.time() < deadline and proc.poll() is None:
        if len(list(cache_dir.rglob("shards/*ray-*.h5"))) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _released(ray_cluster)
    res = featx.extract(data, cache_dir=cache_dir, **TINY)
    assert res.reused > 0 and res.computed > 0 and res.reused + res.computed == 400
    f = featx.load_features(data, cache_dir=cache_dir)
    assert f.X.shape == (400, 512) and len(set(f.sha256)) == 400
    rows = shard_rows(res.extraction)
    assert len(rows) == len(set(rows)) == 400
    assert not list(cache_dir.rglob(".staged-*")) and not list(cache_dir.rglob(".tmp-*"))


def test_engine_ray_without_the_extra_is_a_one_line_error(tiny_dataset, cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    out = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), *CLI_TINY, "--engine", "ray", str(tiny_dataset)])
    assert out.exit_code == 1, out.output
    assert 'Install the extra: pip install "featx[ray]"' in out.output
    assert out.output.strip().count("\n") == 0 and "Traceback" not in out.output
    assert not Path(cache_dir, "extractions").exists()


def test_staged_shards_of_a_dead_driver_are_adopted_without_computing(tiny_dataset, tmp_path, monkeypatch):
    from featx.cache import write_staged_shard

    first = featx.extract(tiny_dataset, cache_dir=tmp_path / "a", **TINY)
    (shard,) = first.extraction.shards()
    with h5py.File(shard) as f:
        cols = f["features"][...], [x.decode() for x in f["sha256"][...]], f["path"].asstr()[...], f["label"].asstr()[...]
    # A driver killed before its first publish: staged shards, no meta.json yet.
    shards = tmp_path / "b" / "extractions" / first.extraction.name / "shards"
    shards.mkdir(parents=True)
    for part in (slice(0, 5), slice(5, None)):
        write_staged_shard(shards, first.extraction.name, cols[0][part], cols[1][part], cols[2][part], cols[3][part])
    assert featx.Cache(tmp_path / "b").extractions() == []  # staged shards are not published rows

    def boom(*a, **k):
        raise AssertionError("the model was built although every row was staged")

    monkeypatch.setattr(featx.backbones, "build_feature_model", boom)
    res = featx.extract(tiny_dataset, cache_dir=tmp_path / "b", **TINY)
    assert (res.computed, res.reused) == (0, 12)
    assert not list(shards.glob(".staged-*")) and len(list(shards.glob("ray-*.h5"))) == 2
    np.testing.assert_array_equal(featx.load_features(tiny_dataset, cache_dir=tmp_path / "b").X,
                                  featx.load_features(tiny_dataset, cache_dir=tmp_path / "a").X)


def test_a_node_that_cannot_see_the_cache_stops_the_run_naming_it(tmp_path):
    pytest.importorskip("ray")
    from featx.errors import CacheError
    from featx.extraction.engines.ray import check_shared_storage

    class Task:  # runs "on" a node whose disk lacks the driver's folder
        def __init__(self, blind):
            self.blind = blind

        def options(self, **kw):
            return self

        def remote(self, path):
            return "FileNotFoundError: No such file or directory" if self.blind else Path(path).read_text()

    class TwoNodes:
        class exceptions:
            RayError = RuntimeError

        def nodes(self):
            return [{"Alive": True, "NodeID": "aa" * 28, "NodeManagerAddress": "10.0.0.1"},
                    {"Alive": True, "NodeID": "bb" * 28, "NodeManagerAddress": "10.0.0.2"}]

        def remote(self, fn):
            return _Dispatch()

        def get(self, refs, timeout=None):
            return refs

    class _Dispatch:
        def options(self, **kw):
            return Task(blind=kw["scheduling_strategy"].node_id.startswith("bb"))

    with pytest.raises(CacheError, match=r"10\.0\.0\.2 \(FileNotFoundError.*cannot see the cache folder"):
        check_shared_storage(TwoNodes(), tmp_path)
    assert not list(tmp_path.iterdir())  # the probe is removed either way


class _FakeRay:
    """Records what ray.init is given and writes to file descriptor 2 as Ray's C++ core does; then fails."""

    def __init__(self):
        self.kwargs = None

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.kwargs = kwargs
        os.write(2, b"E core_worker.cc: actor restart notice\n")
        raise ConnectionError("stop here")


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_logs_are_quiet_unless_verbose(verbose, monkeypatch, capfd):
    from featx.extraction.engines import ray as ray_engine

    monkeypatch.setenv("FEATX_VERBOSE", "1" if verbose else "")
    fake = _FakeRay()
    monkeypatch.setattr(ray_engine, "require", lambda: fake)
    with pytest.raises(featx.FeatxError, match="Could not start or join Ray"):
        ray_engine.RayEngine().compute(None, [], None, {}, set())
    import logging

    assert fake.kwargs["logging_level"] == (logging.INFO if verbose else logging.ERROR)
    assert fake.kwargs["log_to_driver"] is verbose
    assert ("core_worker.cc" in capfd.readouterr().err) is verbose


def test_featx_verbose_reaches_the_frameworks(monkeypatch):
    monkeypatch.setenv("FEATX_VERBOSE", "")
    assert "--verbose" in CliRunner().invoke(cli, ["--help"]).output
    r = CliRunner().invoke(cli, ["--verbose", "backbones", "vgg16"])
    assert r.exit_code == 0 and os.environ["FEATX_VERBOSE"] == "1"


@pytest.mark.parametrize("value, present, available", [
    (None, 1, True), (None, 0, False), ("", 1, False), ("-1", 1, False), ("0", 1, True),
    ("3", 1, False), ("1,0", 1, False), ("GPU-5e1b", 1, True),
])
def test_gpu_available_is_whether_cuda_would_see_a_gpu(value, present, available):
    """One reading of the driver and CUDA_VISIBLE_DEVICES for the local engine and Ray's actors:
    an index past the last GPU hides it, as CUDA does (it used to count as a GPU here)."""
    from featx.extraction.engines.ray import visible_gpus as ray_visible_gpus
    from featx.runtime import gpu_available, visible_gpus

    assert ray_visible_gpus is visible_gpus
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert gpu_available(env, present) is available
