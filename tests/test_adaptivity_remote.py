"""bench.adaptivity --server: the edge here against a runtime.cloud elsewhere (here: on loopback in a
subprocess), its link measured not shaped, and failed measurements retried with a new edge worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start_cloud_server

from cli.errors import CoInferError, Unreachable

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["--quotas", "0.5", "--n", "1", "--warmup", "0", "--profile", "stored"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_connection_flags_go_with_server() -> None:
    from bench.adaptivity import parse_args
    with pytest.raises(CoInferError, match="--tls-ca, --token and --token-file go with --server"):
        parse_args(["--token-file", "x"])
    with pytest.raises(CoInferError, match="bad --server 'nowhere': expected HOST:PORT"):
        parse_args(["--server", "nowhere"])
    with pytest.raises(CoInferError, match="--retries must be >= 0, got -1"):
        parse_args(["--retries", "-1"])


@pytest.mark.slow
def test_remote_cloud_with_a_token(tmp_path: Path) -> None:
    """A tiny grid against a token-protected cloud on 127.0.0.1: every scheme measured at the one measured
    rate, no namespaces, no retries needed."""
    token = tmp_path / "token"
    token.write_text("s3cret-for-the-test\n")
    cloud, port = start_cloud_server("--no-finetuned", "--token-file", str(token), stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.adaptivity", "--server", f"127.0.0.1:{port}",
                              "--token-file", str(token), *TINY, "--json", "--out", str(tmp_path / "a.png")],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        stop(cloud)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["mode"] == "remote" and d["server"] == f"127.0.0.1:{port}" and d["adaptive"] is None
    assert any("no link shaping by this testbed" in n for n in d["notes"])
    assert d["link_probe"]["mbps"] > 0 and d["rates"] == [d["link_probe"]["mbps"]]
    [row] = d["grid"]
    assert row["quota"] == 0.5 and row["mem_limit"] is None and row["memory"] is None
    assert set(row["measured_s"]) == set(d["schemes"]) and all(v > 0 for v in row["measured_s"].values())
    assert row["best"] == min(row["measured_s"], key=row["measured_s"].get)
    assert d["retries"] == {"limit": 2, "retried": 0, "failed": 0}
    assert (tmp_path / "a.png").stat().st_size > 0


def run_with_cloud_killed(tmp_path: Path, restart: bool, retries: int):
    """run_adaptivity against a loopback cloud that is killed after the edge worker's third measurement
    (the RTT calibration, then two grid schemes) and, with `restart`, started again on the same port."""
    from bench.adaptivity import AdaptivityConfig, parse_args, run_adaptivity
    from runtime.edgeworker import EdgeWorker
    cloud, port = start_cloud_server("--no-finetuned", stderr=subprocess.DEVNULL)
    clouds = [cloud]
    config, _, _ = parse_args(["--server", f"127.0.0.1:{port}", *TINY, "--retries", str(retries), "--out",
                               str(tmp_path / "a.png")])
    assert isinstance(config, AdaptivityConfig)
    original, calls = EdgeWorker.run, []

    def run(self, *args, **kwargs):
        calls.append(args[0])
        out = original(self, *args, **kwargs)
        if len(calls) == 3:
            clouds[0].kill()
            clouds[0].wait()
            if restart:
                clouds.append(start_cloud_server("--no-finetuned", "--port", str(port), stderr=subprocess.DEVNULL)[0])
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(EdgeWorker, "run", run)
    try:
        return run_adaptivity(config), calls
    finally:
        mp.undo()
        for proc in clouds:
            stop(proc)


@pytest.mark.slow
def test_a_cloud_that_comes_back_is_retried(tmp_path: Path) -> None:
    d, calls = run_with_cloud_killed(tmp_path, restart=True, retries=2)
    assert d["retries"] == {"limit": 2, "retried": 1, "failed": 1}
    [row] = d["grid"]
    assert set(row["measured_s"]) == set(d["schemes"])
    # the measurement that failed was done again: one more call than there are measurements
    assert len(calls) == 1 + len(d["schemes"]) + 1


@pytest.mark.slow
def test_a_cloud_that_stays_dead_is_exit_3(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match=r"^measuring \S+ failed 2 times \(--retries 1\); 1 measurements retried, "
                                          r"2 attempts failed; the last: edge worker: ") as info:
        run_with_cloud_killed(tmp_path, restart=False, retries=1)
    assert info.value.exit_status == 3 and "\n" not in str(info.value)
