"""Shared fixtures: a tiny digits app (VGG-16 topology at width 1/32) with a trained checkpoint; the cloud
server in a subprocess (`start_cloud_server`) or in this process (`serving`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _schemes_dir(tmp_path_factory):
    """Every fine-tuned scheme a test keeps goes to a folder of the test session, never the repository's
    checkpoints/schemes (database/scheme_weights.py); a test that wants its own sets COINFER_SCHEMES_DIR.
    Session-wide, so that module- and session-scoped fixtures that fine-tune are covered too."""
    import os
    before = os.environ.get("COINFER_SCHEMES_DIR")
    os.environ["COINFER_SCHEMES_DIR"] = before or str(tmp_path_factory.getbasetemp() / "schemes")
    yield
    if before is None:
        os.environ.pop("COINFER_SCHEMES_DIR", None)


def write_tiny_app(folder: Path, name: str = "tiny_digits", **overrides) -> Path:
    app = {
        "name": name,
        "model": {"arch": "vgg16_bn", "width": 1 / 32, "input_size": 32, "in_channels": 1,
                  "num_classes": 10, "classifier_hidden": 16},
        "dataset": {"name": "digits", "test_size": 200, "split_seed": 0, "limit_train": 300},
        "train": {"epochs": 3, "lr": 0.05, "batch_size": 32, "seed": 0},
        "protocol": {"epochs": 1, "lr": 0.01, "schedule": "linear", "batch_size": 64, "seed": 0},
        "devices": {"edge": {"name": "tiny-edge", "speed": 0.5}, "cloud": {"name": "tiny-cloud"}},
        "raw_input_bytes": 1024,
        "rtt_s": 0.0,
        "checkpoint": str(folder / f"{name}.pt"),
    }
    app.update(overrides)
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(app))
    return path


@pytest.fixture(scope="session")
def tiny_app_path(tmp_path_factory) -> str:
    """Path of a tiny digits app YAML whose checkpoint has been trained (a few seconds)."""
    from models.train import main as train_main
    folder = tmp_path_factory.mktemp("tiny_app")
    path = write_tiny_app(folder)
    train_main(["--app", str(path)])
    return str(path)


@pytest.fixture(scope="session")
def tiny_app(tiny_app_path):
    from apps import load_app
    return load_app(tiny_app_path)


@pytest.fixture(scope="session")
def tiny_db(tiny_app, tmp_path_factory):
    """A database for the tiny app: latency from formulas, a complete synthetic accuracy table."""
    from compress.scheme import Scheme
    from database.store import AccuracyRow, LatencyRow, Store
    from models.build import app_points
    from search.synthetic_problems import synthetic_latency, synthetic_table
    db = str(tmp_path_factory.mktemp("db") / "tiny.sqlite")
    store = Store(db)
    # a slow edge and a fast cloud (as the default app's devices), from formulas so the test does
    # not depend on this machine's load; test_profile_rows checks the real profiler
    syn = synthetic_latency(app_points(tiny_app), edge_per_point=2e-3, cloud_per_point=1e-4)
    rows = []
    for side, name, values, single in (("edge", "tiny-edge", syn.edge_s, syn.edge_all),
                                       ("cloud", "tiny-cloud", syn.cloud_s, syn.cloud_all)):
        for pt in app_points(tiny_app):
            for c in (1, pt.channels):
                t = float(values[syn.space.index(Scheme(pt.index, c, 1))])
                rows.append(LatencyRow(tiny_app.name, name, pt.index, c, side, t))
        rows.append(LatencyRow(tiny_app.name, name, 13 if side == "edge" else -1, 0, side, single))
    store.put_latency(rows)
    from devices.fingerprint import this_machine
    for name in ("tiny-edge", "tiny-cloud"):  # this machine's: a search here warns of no foreign profile
        store.put_device(name, this_machine())
    table = synthetic_table(app_points(tiny_app), base=0.9, seed=5)
    proto = tiny_app.protocol.name
    store.put_accuracy([AccuracyRow(tiny_app.name, proto, p, c, b, 0, t) for (p, c, b), t in table.items()])
    store.put_base(tiny_app.name, proto, 0.9)
    return db


def latency_only_copy(tiny_db: str, path) -> tuple:
    """(full store, new store at `path`) where the new one holds tiny_db's latency rows and devices,
    and no accuracy yet: the start of a partial database."""
    from database.store import Store
    full, store = Store(tiny_db), Store(str(path))
    store.put_latency(full.latency_rows("tiny_digits"))
    from devices.fingerprint import this_machine
    for name in ("tiny-edge", "tiny-cloud"):
        store.put_device(name, this_machine())
    return full, store


def start_cloud_server(*args: str, env: dict[str, str] | None = None, stderr=None):
    """`python -m runtime.cloud` on 127.0.0.1 at a port the OS picks: (process, port) once it says it is
    ready (its readiness line on stdout; its log goes to this process's stderr, or to `stderr`, e.g.
    subprocess.PIPE). `env` is added to this process's environment. The caller stops it (SIGTERM)."""
    import os
    import subprocess
    import sys

    from runtime.ready import wait_ready
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cloud", "--port", "0", "--json", "--threads", "1", *args],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        return proc, wait_ready(proc, 120, "the cloud server")["port"]
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@contextlib.asynccontextmanager
async def serving(app, config=None, base=None):
    """`async with serving(app, ServerConfig(...), base) as server:` a CloudServer listening on 127.0.0.1 at
    a port the OS picks (`server.port`), closed on the way out."""
    from runtime.cloud import CloudServer, ServerConfig
    server = CloudServer(app, config or ServerConfig(), base)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size, name)`: a fresh tmpfs of `size` (e.g. "16k": a disk that fills) mounted under tmp_path, unmounted
    after the test; `tmpfs.readonly(folder)` remounts one read-only. Root only: the test is skipped otherwise."""
    import os
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size: str, name: str = "fs") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    def readonly(folder: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)

    mount.readonly = readonly  # type: ignore[attr-defined]
    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
