"""The edge CLI's --auto, --adapt and --queue modes against a real cloud server (loopback, subprocess).

The schemes --auto should pick come from an oracle written here: brute force over every stored
scheme within the accuracy loss (and the two single ends) with the latency model's breakdown,
without the search or `runtime.advisor`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import start_cloud_server

from apps import load_app
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.store import Store
from runtime import edge
from search.latency import Breakdown, LatencyModel

APP = load_app("vgg16_digits")
pytestmark = pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")


@pytest.fixture(scope="module")
def server() -> str:
    """python -m runtime.cloud on 127.0.0.1 with the pruned base weights (no fine-tuning in tests)."""
    proc, port = start_cloud_server("--no-finetuned")
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)


class Oracle:
    """The stored database read directly: the feasible schemes at accuracy loss 0.01 and their latency."""

    def __init__(self) -> None:
        store = Store(None, create=False)
        self.model = LatencyModel.from_store(store, APP)
        base = store.base(APP.name, APP.protocol.name)
        table = store.accuracy_table(APP.name, APP.protocol.name, APP.protocol.seed)
        self.feasible = [s for s, a in table.items() if a >= base - 0.01] + [Scheme.ALL_EDGE, Scheme.ALL_CLOUD]

    def breakdowns(self, mbps: float) -> list[tuple[Breakdown, Scheme]]:
        return [(self.model.breakdown(s, mbps), s) for s in self.feasible]

    def fastest(self, mbps: float) -> str:
        """The lowest total latency (sum of the stages)."""
        return str(min(self.breakdowns(mbps), key=lambda bs: bs[0].edge + bs[0].transfer + bs[0].cloud)[1])

    def best_pipelined(self, mbps: float) -> str:
        """The lowest slowest stage (queue mode)."""
        return str(min(self.breakdowns(mbps), key=lambda bs: max(bs[0].edge, bs[0].transfer, bs[0].cloud))[1])


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


def run_cli(capsys, *argv: str) -> dict:
    assert edge.main([*argv, "--json", "--no-finetuned"]) == 0
    return json.loads(capsys.readouterr().out)


def test_auto_runs_the_fastest_feasible_scheme_at_the_given_bandwidth(server, oracle, capsys) -> None:
    report = run_cli(capsys, "--server", server, "--auto", "--bandwidth", "1", "-accuracy_loss", "0.01", "--n", "4")
    expected = oracle.fastest(1.0)
    assert report["scheme"] == expected and report["schemes"] == [expected] * 4
    assert report["requests"] == 4 and report["estimates"][0] == pytest.approx(1.0, rel=0.5)


def test_auto_says_where_its_profiles_were_measured(server, capsys, monkeypatch) -> None:
    """The shipped profiles were emulated on an AMD EPYC with 2 CPUs: quiet there, one warning a side elsewhere."""
    args = ("--server", server, "--auto", "--bandwidth", "1", "--n", "1")
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: {"cpu_model": "AMD EPYC", "logical_cpus": 2})
    report = run_cli(capsys, *args)
    assert [(p["device"], p["side"], p["measured_at"], p["foreign"]) for p in report["profiles"]] == [
        ("cpu-edge", "edge", "2026-11-23T19:15:48", False), ("cpu-cloud", "cloud", "2026-11-23T19:16:24", False)]
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: {"cpu_model": "Other CPU", "logical_cpus": 8})
    assert edge.main([*args, "--json", "--no-finetuned"]) == 0
    out = capsys.readouterr()
    assert [p["foreign"] for p in json.loads(out.out)["profiles"]] == [True, True]
    lines = out.err.splitlines()
    assert len(lines) == 2 and all(line.endswith(" in --latency-profile EDGE,CLOUD)") for line in lines)
    assert lines[0].startswith("warning: the edge latency profile of cpu-edge for vgg16_digits was measured on AMD "
                               "EPYC, 2 CPUs, not on this machine (Other CPU, 8 CPUs)")
    assert lines[1].startswith("warning: the cloud latency profile of cpu-cloud for vgg16_digits was measured on AMD "
                               "EPYC, 2 CPUs, not on this machine (Other CPU, 8 CPUs)")


def test_auto_probes_when_no_bandwidth_is_given(server, capsys) -> None:
    report = run_cli(capsys, "--server", server, "--auto", "--n", "2")
    assert report["estimates"][0] > 0  # measured on loopback: whatever it is, it is a positive rate
    assert report["requests"] == 2


def test_auto_adapt_runs_frontier_schemes(server, oracle, capsys) -> None:
    report = run_cli(capsys, "--server", server, "--auto", "--adapt", "--bandwidth", "1", "--n", "5")
    grid = [g for g, _ in report["frontier"]]
    frontier = [str(Scheme.from_json(s)) for _, s in report["frontier"]]
    assert grid == pytest.approx([0.125 * 2 ** (i / 2) for i in range(13)])  # 0.125 .. 8 Mbps, 2 per octave
    assert frontier == [oracle.fastest(g) for g in grid]
    assert len(report["schemes"]) == 5 and set(report["schemes"]) <= set(frontier)


def test_auto_queue_minimises_the_slowest_stage(server, oracle, capsys) -> None:
    report = run_cli(capsys, "--server", server, "--auto", "--queue", "--bandwidth", "1", "--n", "6", "--depth", "3")
    assert report["scheme"] == oracle.best_pipelined(1.0) and report["requests"] == 6
    assert any("queue mode: up to 3 requests in flight" in n for n in report["notes"])


def test_queue_mode_answers_like_sequential_mode(server, capsys) -> None:
    sequential = run_cli(capsys, "--server", server, "--scheme", "4,12,3", "--n", "8")
    queued = run_cli(capsys, "--server", server, "--scheme", "4,12,3", "--n", "8", "--queue", "--depth", "4")
    assert queued["requests"] == sequential["requests"] == 8
    assert queued["accuracy"] == sequential["accuracy"]  # same images, same weights: same predictions
    assert queued["bytes_up"] == sequential["bytes_up"]


def test_emulated_edge_speed_is_reported(capsys, monkeypatch) -> None:
    """At --speed 0.5 each edge stage takes at least twice the thread CPU time it used, and more
    than an unemulated edge's CPU time for the same work (a generous 1.5 x: the two runs differ)."""
    import statistics
    import time

    from runtime.client import EdgeClient
    calls: list[tuple[float, float]] = []  # (thread CPU s of the edge work, seconds the client reports for it)
    on_device = EdgeClient._on_device

    def spy(self, fn, *args):
        cpu = []

        def timed(*a):
            t0 = time.thread_time()
            out = fn(*a)
            cpu.append(time.thread_time() - t0)
            return out
        result, seconds = on_device(self, timed, *args)
        calls.append((cpu[0], seconds))
        return result, seconds

    monkeypatch.setattr(EdgeClient, "_on_device", spy)
    plain = run_cli(capsys, "--scheme", "all-edge", "--n", "6")
    plain_cpu = statistics.median(c for c, _ in calls)
    calls.clear()
    slow = run_cli(capsys, "--scheme", "all-edge", "--n", "6", "--speed", "0.5")
    assert any("0.5 x this CPU" in n for n in slow["notes"]) and not plain["notes"]
    assert len(calls) == 6 and all(seconds >= 2 * cpu * 0.99 for cpu, seconds in calls), calls
    assert [r["edge_s"] for r in slow["per_request"]] == pytest.approx([s for _, s in calls])
    assert slow["median_s"]["edge_s"] > 1.5 * plain_cpu, (slow["median_s"], plain_cpu)
    named = run_cli(capsys, "--scheme", "all-edge", "--n", "2", "--device", "cpu-edge")  # the app's: 1/8
    assert any("edge cpu-edge emulated at 0.125 x this CPU" in n for n in named["notes"])


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "all-edge", "--adapt"], "--adapt and --bandwidth go with --auto"),
    (["--scheme", "all-edge", "--auto"], "exactly one of --scheme and --auto"),
    (["--auto", "--server", "127.0.0.1:1", "--depth", "0"], "--depth"),
    (["--scheme", "all-edge", "--speed", "2"], "--speed: speed: must be less than or equal to 1"),
    (["--scheme", "all-edge", "--speed", "0.5", "--threads", "2"], "--threads must be 1"),
    (["--scheme", "all-edge", "--edge-speed", "0.5"], "--edge-speed is now --speed"),
    (["--scheme", "all-edge", "--device", "nowhere"], "unknown device 'nowhere'"),
    (["--auto", "-accuracy_loss", "1.5", "--server", "127.0.0.1:1"], "-accuracy_loss"),
    (["--scheme", "all-edge", "--k", "0"], "top-k 0 outside"),
    (["--scheme", "4,12,3", "--server", "127.0.0.1"], "expected HOST:PORT"),
])
def test_bad_arguments_are_one_line_errors(argv, message) -> None:
    with pytest.raises(CoInferError, match=message):
        edge.main(argv)


def _edge_process(server: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "runtime.edge", "--scheme", "4,12,3", "--server", server, "--n", "1",
                           "--no-finetuned", "--timeout", "5"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_a_closed_port_exits_3_with_one_line() -> None:
    with socket.socket() as s:  # a port the OS just handed out, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _edge_process(f"127.0.0.1:{port}")
    assert out.returncode == 3
    assert out.stderr.splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"error: cannot connect to 127.0.0.1:{port}: ")
    assert out.stdout == ""


def test_a_server_that_hangs_up_exits_3_with_one_line() -> None:
    with socket.socket() as listener:  # accepts, reads the HELLO, then closes without answering it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        out = _edge_process(f"127.0.0.1:{port}")
        thread.join(5)
    assert out.returncode == 3
    assert out.stderr.splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"error: connection to 127.0.0.1:{port} lost: ")  # EOF, or a reset on a busy host
