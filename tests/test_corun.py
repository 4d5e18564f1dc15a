"""Co-running (bench.corun, runtime.batching, runtime.training, bench.profiler): short runs on the CPU
with 2 clients in both modes, the report's figures checked against the raw logs by a plain oracle,
and the faults: a server killed mid-run, a client gone mid-request, an app the server does not host,
a rate <= 0."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.corun.__main__ import main as corun_main
from bench.corun.load import LOG_COLUMNS, OK, ClientSpec, Target, schedule
from bench.corun.report import cell_stats, report
from bench.corun.run import twin_app
from tests.conftest import start_cloud_server

ROOT = Path(__file__).resolve().parents[1]


def oracle_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def raw_rows(run: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted((run / "requests").rglob("*.csv")):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == LOG_COLUMNS
            rows += list(reader)
    return rows


def check_report_against_log(run: Path) -> None:
    cells = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    rows = raw_rows(run)
    stats = cell_stats(run)
    assert sum(s.requests for s in stats) == len(rows)
    for s in stats:
        cell = next(c for c in cells if (c["tag"], c["mode"], c["clients"]) == (s.tag, s.mode, s.clients))
        mine = [r for r in rows if f"{r['app']}@{r['scheme']}" == s.target and r["tag"] == s.tag
                and r["mode"] == s.mode and int(r["clients"]) == s.clients]
        ok = [r for r in mine if r["status"] == OK]
        lat = [float(r["latency_s"]) * 1e3 for r in ok]
        assert s.requests == len(mine) and s.ok == len(ok) and s.failed == len(mine) - len(ok)
        assert s.throughput == pytest.approx(len(ok) / cell["duration"])
        for q, value in ((50, s.p50_ms), (95, s.p95_ms), (99, s.p99_ms)):
            assert value == pytest.approx(oracle_percentile(lat, q), rel=1e-9)
        for r in mine:  # latency counts from the scheduled send (closed loop: scheduled == sent)
            if r["status"] == OK:
                assert float(r["latency_s"]) == pytest.approx(float(r["received"]) - float(r["scheduled"]), abs=2e-6)
            if s.mode == "closed":
                assert r["scheduled"] == r["sent"]
            else:
                assert float(r["sent"]) >= float(r["scheduled"]) - 1e-3


@pytest.fixture(scope="module")
def two_apps(tiny_app_path, tmp_path_factory) -> tuple[str, str]:
    """The tiny app and its twin (the same model under another name): two apps, two queues."""
    return tiny_app_path, str(twin_app(tiny_app_path, tmp_path_factory.mktemp("twin")))


@pytest.fixture(scope="module")
def server(two_apps):
    proc, port = start_cloud_server("--app", ",".join(two_apps), "--no-finetuned", stderr=subprocess.DEVNULL)
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


@pytest.mark.parametrize("mode", ["closed", "poisson"])
def test_corun_two_clients_report_matches_log(server, two_apps, tmp_path, mode) -> None:
    run = tmp_path / "run"
    assert corun_main(["client", "--server", f"127.0.0.1:{server}", "--apps", ",".join(two_apps), "--scheme",
                       "tiny_digits=4,2,4", "--clients", "2", "--mode", mode, "--rate", "20", "--duration", "2",
                       "--seed", "3", "--out", str(run)]) == 0
    lines, figures = report(run)
    check_report_against_log(run)
    stats = cell_stats(run)
    assert {s.target for s in stats} == {"tiny_digits@4,2,4", "tiny_digits_b@all-cloud"}
    assert all(s.mode == mode and s.clients == 2 and s.failed == 0 and s.ok > 0 for s in stats)
    if mode == "poisson":  # 2 clients x 20/s x 2 s = 80 expected per target
        assert all(20 <= s.requests <= 140 for s in stats)
    assert all(p.is_file() and p.stat().st_size > 0 for p in figures)
    assert any("failed requests over all cells: 0" in line for line in lines)
    assert (run / "report.md").read_text().startswith("# Co-run report")


def test_corun_client_and_report_json(server, two_apps, tmp_path, capsys) -> None:
    """--json: one object on stdout, its request counts those of the CSV logs (read here, not by the report)."""
    run = tmp_path / "run"
    assert corun_main(["client", "--server", f"127.0.0.1:{server}", "--apps", ",".join(two_apps), "--clients", "1",
                       "--duration", "1", "--out", str(run), "--json"]) == 0
    client = json.loads(capsys.readouterr().out)
    logged = sum(1 for path in run.glob("requests/*/*.csv") for _ in path.read_text().splitlines()[1:])
    assert client["run"] == str(run) and client["failed"] == 0 and client["requests"] == logged > 0
    assert [c["clients"] for c in client["cells"]] == [1]
    assert corun_main(["report", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(c["requests"] for c in out["cells"]) == logged
    assert {Path(f).name for f in out["figures"]} == {"latency_cdf.png", "throughput.png"}


def test_poisson_schedule_is_seeded_and_poisson() -> None:
    payload = None
    target = Target("a", "all-cloud", "127.0.0.1", 1, payload)  # type: ignore[arg-type]
    spec = ClientSpec(target, 0, 1, 2, "poisson", 50.0, 40.0, 7, "base", None, 1.0, "")
    a, b = schedule(spec, 100.0), schedule(spec, 100.0)
    assert (a == b).all() and a[0] >= 100.0 and a[-1] < 140.0
    assert abs(len(a) - 2000) < 4 * math.sqrt(2000)
    other = ClientSpec(target, 0, 0, 2, "poisson", 50.0, 40.0, 7, "base", None, 1.0, "")
    assert not (schedule(other, 100.0)[:10] == a[:10]).all()  # each client its own stream


def test_bad_input_is_one_line_exit_2(server, tiny_app_path, two_apps, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "bench.corun", "client", "--server", f"127.0.0.1:{server}"]
    cases = {
        "rate 0": ["--apps", tiny_app_path, "--mode", "poisson", "--rate", "0"],
        "rate < 0": ["--apps", tiny_app_path, "--mode", "poisson", "--rate", "-1"],
        "unknown app": ["--apps", "no_such_app"],
        "bad mode": ["--apps", tiny_app_path, "--mode", "burst"],
        "bad clients": ["--apps", tiny_app_path, "--clients", "0"],
    }
    for name, args in cases.items():
        out = tmp_path / name.replace(" ", "_")
        proc = subprocess.run([*base, *args, "--duration", "1", "--out", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert not out.exists(), name  # nothing half-written


def test_app_the_server_does_not_host(tiny_app_path, two_apps, tmp_path) -> None:
    proc, port = start_cloud_server("--app", tiny_app_path, "--no-finetuned", stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "run"
        res = subprocess.run([sys.executable, "-m", "bench.corun", "client", "--server", f"127.0.0.1:{port}", "--apps",
                              two_apps[1], "--duration", "1", "--out", str(out)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "does not host app 'tiny_digits_b'" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        stats = proc.communicate(timeout=30)[0]
    assert json.loads(stats)["error_unknown_app"] == 1


@pytest.mark.parametrize("mode", ["closed", "poisson"])
def test_server_killed_mid_run_clients_report_and_keep_logs(tiny_app_path, tmp_path, mode) -> None:
    proc, port = start_cloud_server("--app", tiny_app_path, "--no-finetuned", stderr=subprocess.DEVNULL)
    out = tmp_path / "run"
    client = subprocess.Popen([sys.executable, "-m", "bench.corun", "client", "--server", f"127.0.0.1:{port}",
                               "--apps", tiny_app_path, "--clients", "2", "--mode", mode, "--rate", "30",
                               "--duration", "8", "--timeout", "3", "--out", str(out)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "requests").rglob("*.csv")) or not any(
                len(p.read_text().splitlines()) > 5 for p in (out / "requests").rglob("*.csv")):
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        stdout, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
        if proc.poll() is None:
            proc.kill()
    assert client.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ") and "logs are kept in" in stderr
    rows = raw_rows(out)
    statuses = {r["status"] for r in rows}
    assert OK in statuses and statuses & {"conn_lost", "timeout"}, statuses
    for path in (out / "requests").rglob("*.csv"):  # every log whole: a header and complete rows
        with open(path, newline="") as f:
            assert all(len(r) == len(LOG_COLUMNS) for r in csv.reader(f))
    assert json.loads((out / "cells.jsonl").read_text().splitlines()[0])["failed"] > 0


def test_client_gone_mid_request_does_not_disturb_the_others(server, tiny_app_path, tmp_path) -> None:
    from runtime.protocol import Hello, Request, encode
    stop = threading.Event()

    def vandal() -> None:  # half a request frame, then gone; over and over
        body = bytes(200)
        frame = encode(Request(1, "tiny_digits", -1, 1, 8, 1, (1, 1, 32, 32), body + bytes(1032 - 200)))
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", server)) as s:
                s.sendall(encode(Hello("tiny_digits")))
                s.recv(1024)
                s.sendall(frame[: len(frame) // 2])
            time.sleep(0.05)

    thread = threading.Thread(target=vandal)
    thread.start()
    try:
        run = tmp_path / "run"
        assert corun_main(["client", "--server", f"127.0.0.1:{server}", "--apps", tiny_app_path, "--clients", "2",
                           "--duration", "2", "--out", str(run)]) == 0
    finally:
        stop.set()
        thread.join()
    assert all(r["status"] == OK for r in raw_rows(run))


def test_batching_merges_and_answers_as_unbatched(tiny_app) -> None:
    from bench.corun.payloads import make_payload
    from compress.scheme import Scheme
    from models.build import load_base_model
    from runtime.batching import AppQueue, BatchPolicy, compute
    from runtime.protocol import Request
    from runtime.tails import TailCache, TailPolicy
    base = load_base_model(tiny_app)
    scheme = Scheme(4, 2, 4)
    payload = make_payload(tiny_app, scheme, 8, base)
    tail = TailCache(base, TailPolicy(), app=tiny_app).get(scheme)
    reqs = [Request(i + 1, tiny_app.name, payload.p, payload.c, payload.bits, 3, payload.shape, body)
            for i, body in enumerate(payload.bodies)]
    alone = [compute(tiny_app.name, [r], tail)[0] for r in reqs]

    async def main():
        queue = AppQueue(tiny_app.name, BatchPolicy(8, 0.05))
        answers = await asyncio.gather(*(queue.submit(r, tail) for r in reqs))
        await queue.close()
        return queue, [a for a, _ in answers]

    queue, batched = asyncio.run(main())
    assert queue.images == 8 and queue.batches < 8
    for a, b in zip(alone, batched):
        assert a.request_id == b.request_id and a.classes == b.classes
        assert b.scores[0] == pytest.approx(a.scores[0], abs=1e-5)


def test_training_corun_reports_progress(tiny_app_path, tmp_path) -> None:
    from runtime.training import TrainConfig, TrainingCorun
    corun = TrainingCorun(TrainConfig(tiny_app_path, nice=19, threads=1, progress=str(tmp_path / "t.csv"),
                                      interval=0.2))
    corun.start()
    try:
        deadline = time.monotonic() + 120
        while corun.progress().samples == 0:
            assert time.monotonic() < deadline and corun.proc.poll() is None
            time.sleep(0.2)
        assert os.sched_getscheduler(corun.proc.pid) == os.SCHED_IDLE  # the default protects inference
        assert os.getpriority(os.PRIO_PROCESS, corun.proc.pid) == 19
        time.sleep(1.0)
    finally:
        done = corun.stop()
    assert done.samples > 0 and done.rate > 0
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) < 19  # only the child was niced


def test_profiler_samples_processes_and_skips_missing_gpu(tmp_path) -> None:
    out = tmp_path / "profile.csv"
    res = subprocess.run([sys.executable, "-m", "bench.profiler", "--interval", "0.3", "--out", str(out), "--pid",
                          str(os.getpid()), "--duration", "1.5"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    from bench.profiler import Gpus, read_samples
    rows = read_samples(out)
    kinds = {r["kind"] for r in rows}
    assert {"machine", "proc"} <= kinds and len({r["time"] for r in rows}) >= 3
    assert any(int(r["pid"]) == os.getpid() for r in rows if r["kind"] == "proc")
    if not Gpus().available:
        assert "gpu" not in kinds and "no GPU rows" in res.stderr
    else:
        assert "gpu" in kinds


@pytest.mark.slow
def test_run_orchestration_all_cells(tiny_app_path, tmp_path) -> None:
    """bench.corun run end to end, small: layouts compared, base / train / batch cells, report targets."""
    from bench.corun.run import CorunConfig, run_corun
    from runtime.batching import BatchPolicy
    run = tmp_path / "run"
    cfg = CorunConfig(str(run), (tiny_app_path,), ("4,2,4",), twin=True, clients=(2,), duration=1.5,
                    cells=("base", "train", "batch"), batch=BatchPolicy(4, 0.002), inprocess_s=0.5)
    run_corun(cfg, progress=lambda line: None)
    for name in ("inprocess.json", "layout.json", "profile.csv", "train-train.csv", "server-batch.stats"):
        assert (run / name).is_file(), name
    batch_stats = json.loads((run / "server-batch.stats").read_text().splitlines()[0])
    assert batch_stats["batched_images"] == batch_stats["replies"] and batch_stats["batches"] >= 1
    assert json.loads((run / "server-train.stats").read_text().splitlines()[0])["train_samples"] > 0
    lines, figures = report(run)
    check_report_against_log(run)
    stats = cell_stats(run)
    assert {(s.tag, s.mode) for s in stats} == {(t, m) for t in ("base", "train", "batch") for m in ("closed",
                                                                                                       "poisson")}
    assert all(s.failed == 0 for s in stats)
    assert all(s.train_rate and s.train_rate > 0 for s in stats if s.tag == "train")
    assert any("saturation" in line for line in lines) and any("with training" in line for line in lines)
    assert set(json.loads((run / "layout.json").read_text())) == {"shared", "per-app"}
    assert len(figures) == 3
