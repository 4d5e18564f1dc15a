"""runtime.linkprobe on loopback: the sink / source pair times a transfer, the filler keeps sending."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.errors import CoInferError
from runtime.ready import announce, parse_ready, ready_line, wait_ready

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PROBE = [sys.executable, "-m", "runtime.linkprobe"]


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([*PROBE, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_ready_line_round_trip(capsys) -> None:
    line = ready_line("127.0.0.1", 5000, app="x")
    assert parse_ready(line) == {"ready": True, "host": "127.0.0.1", "port": 5000, "app": "x"}
    for other in ("serving on 5000", "{}", '{"ready": false, "port": 1}', '{"ready": true, "port": "1"}', "[1]"):
        assert parse_ready(other) is None
    announce("::1", 7)
    assert parse_ready(capsys.readouterr().out)["port"] == 7


def test_wait_ready_skips_other_lines_and_fails_in_one_line() -> None:
    code = "import time; print('hello'); print('{\"ready\": true, \"host\": \"h\", \"port\": 9}', flush=True); print(1)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert wait_ready(proc, 10)["port"] == 9
    assert proc.communicate(timeout=10)[0] == "1\n"  # the rest of stdout stays readable
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdout=subprocess.PIPE, text=True)
    with pytest.raises(CoInferError, match="before it was ready .exit status 3"):
        wait_ready(proc, 10)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(CoInferError, match="did not say it was ready within 0.5 s"):
            wait_ready(proc, 0.5)
    finally:
        stop(proc)


def test_sink_and_source_time_a_transfer() -> None:
    sink = start("sink", "127.0.0.1", "0", "100000")
    try:
        port = wait_ready(sink, 30)["port"]
        out = subprocess.run([*PROBE, "source", "127.0.0.1", str(port), "100000"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert 0 < float(out.stdout) < 10
        assert sink.wait(10) == 0
    finally:
        stop(sink)


def test_filler_sends_to_its_sink_until_killed() -> None:
    sink = start("filler-sink", "127.0.0.1", "0")
    filler = None
    try:
        port = wait_ready(sink, 30)["port"]
        filler = start("filler", "127.0.0.1", str(port), "--cpu", str(min(os.sched_getaffinity(0))))
        assert wait_ready(filler, 30)["port"] == port  # FILL_CHECK frames are out
        time.sleep(0.2)
        assert filler.poll() is None and sink.poll() is None
        # the sink holds the port: binding it again fails
        with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
    finally:
        for proc in (filler, sink):
            if proc is not None:
                stop(proc)


def test_help_and_bad_arguments() -> None:
    for sub in ([], ["sink"], ["source"], ["filler"], ["filler-sink"]):
        out = subprocess.run([*PROBE, *sub, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout, sub
    for bad in (["sink", "127.0.0.1", "70000", "1"], ["source", "127.0.0.1", "1", "0"], ["nope"], []):
        out = subprocess.run([*PROBE, *bad], cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1, bad
    # nothing listens: exit 3 (test_source_without_a_sink_exits_3_with_one_line)


def test_source_without_a_sink_exits_3_with_one_line() -> None:
    with socket.socket() as s:  # a port just handed out and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([*PROBE, "source", "127.0.0.1", str(port), "100"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=30)
    assert (out.returncode, out.stdout) == (3, "")
    assert out.stderr == f"error: source 127.0.0.1:{port}: Connection refused\n"
