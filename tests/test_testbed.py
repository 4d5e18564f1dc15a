"""The namespace testbed: setup, shaping, CPU quota, teardown, crash clean-up (root, ip, tc, cgroup v1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from apps import Device
from cli.errors import CoInferError
from devices.cpuquota import CPU_ROOT, quota_support
from runtime.netns import PREFIX, netns_support, parse_rate, tbf_args
from runtime.testbed import Testbed, TestbedConfig, cleanup_leftovers

ROOT = Path(__file__).resolve().parents[1]
APP = "vgg16_digits"


def edge(speed: float | None, emulation: str | None = None) -> Device:
    """The testbed's edge device at `speed` (None: this CPU as it is)."""
    return Device(name="cpu-edge", side="edge", speed=speed, emulation=emulation)
REASON = netns_support() or quota_support()
needs_root = pytest.mark.skipif(REASON is not None, reason=f"testbed needs root, ip, tc and cgroup v1: {REASON}")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def test_parse_rate_and_tbf_args() -> None:
    assert parse_rate("1mbit") == parse_rate("1") == 1.0
    assert parse_rate("512kbit") == 0.5
    with pytest.raises(CoInferError, match="bad rate 'fast': expected e.g. 1mbit"):
        parse_rate("fast")
    assert tbf_args(8.0)[:2] == ["rate", f"{2**20}bps"]  # 8 Mbps = 2^20 bytes/s


@needs_root
@pytest.mark.root
def test_setup_shaping_and_teardown() -> None:
    with Testbed(APP, TestbedConfig(8.0, edge(0.125, "quota"), start_cloud=False)) as tb:
        net = tb.net
        assert tb.mode == "netns" and {net.ns_edge, net.ns_cloud} <= namespaces()
        assert "tbf" in tb.qdisc() and (CPU_ROOT / tb.group).is_dir()
        tb.setup()  # idempotent
        v = tb.verify(1 << 19)  # 512 KiB at 8 Mbps: 0.5 s (+ ~5 % TCP/IP/Ethernet headers)
        assert 0.95 < v["seconds"] / v["expected_s"] < 1.3, v
        tb.set_rate(16.0)
        assert "16777Kbit" in tb.qdisc()
        v = tb.verify(1 << 19)
        assert 0.95 < v["seconds"] / v["expected_s"] < 1.4, v
        # an edge command runs in the edge namespace, inside the cgroup
        out = tb.run_edge(["sh", "-c", "cat /proc/self/cgroup; ip -o addr show"], capture_output=True, text=True)
        assert f"cpu:/{tb.group}" in out.stdout.replace(",cpuacct", "") or tb.group in out.stdout
        assert net.edge_ip in out.stdout and net.cloud_ip not in out.stdout
    assert not {net.ns_edge, net.ns_cloud} & namespaces()
    assert net.link_edge not in links() and not (CPU_ROOT / tb.group).exists()
    tb.teardown()  # idempotent


@needs_root
@pytest.mark.root
def test_paced_link_serialises_small_messages() -> None:
    """A bare tbf lets the first 1600 bytes through at once; with the filler keeping the bucket empty,
    4 KiB waits ~ its bytes / rate (+ TCP/IP headers), also after a rate change."""
    with Testbed(APP, TestbedConfig(1.0, edge(None), start_cloud=False, link="paced")) as tb:
        assert "pfifo_fast" in tb.qdisc()
        v = tb.verify(4096)  # 31 ms at 1 Mbps; a full 1600-byte bucket would make it ~20 ms
        assert 0.85 < v["seconds"] / v["expected_s"] < 1.6, v
        tb.set_rate(2.0)
        assert all(p.poll() is None for p in tb.net.fillers)  # the filler keeps running across the change
        v = tb.verify(4096)
        assert 0.85 < v["seconds"] / v["expected_s"] < 1.6, v


@needs_root
@pytest.mark.root
def test_cloud_server_and_edge_cli_in_namespaces() -> None:
    with Testbed(APP, TestbedConfig(4.0, edge(0.5), cloud_args=["--no-finetuned"])) as tb:
        assert tb.server.startswith(tb.net.cloud_ip)
        out = tb.run_edge([sys.executable, "-m", "runtime.edge", "--server", "{server}", "--scheme", "all-cloud",
                           "--n", "3", "--json", "--no-finetuned"], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["requests"] == 3 and report["bytes_up"] == 48 + 8 + 1024


@needs_root
@pytest.mark.root
def test_leftovers_of_a_killed_testbed_are_removed() -> None:
    script = ("from apps import Device; from runtime.testbed import Testbed, TestbedConfig; import time; "
              "tb = Testbed('vgg16_digits', "
              "TestbedConfig(1.0, Device(name='e', speed=0.125, emulation='quota'), start_cloud=False)); "
              "tb.setup(); print(tb.net.ns_edge, tb.group, flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for sig, cleans_itself in ((signal.SIGTERM, True), (signal.SIGKILL, False)):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        ns, group = proc.stdout.readline().split()
        assert ns in namespaces() and (CPU_ROOT / group).is_dir()
        proc.send_signal(sig)
        proc.wait(20)
        if cleans_itself:  # signal handler: torn down on the way out
            assert ns not in namespaces() and not (CPU_ROOT / group).exists()
        else:  # kill -9: the next setup (or --cleanup) removes what the dead pid left
            assert ns in namespaces()
            removed = cleanup_leftovers()
            assert any(ns in r for r in removed)
            assert ns not in namespaces() and not (CPU_ROOT / group).exists()
            assert f"{PREFIX}{proc.pid}" not in links()


def test_loopback_fallback_says_so() -> None:
    with Testbed(APP, TestbedConfig(2.0, edge(None), force_loopback=True, start_cloud=False)) as tb:
        assert tb.mode == "loopback" and tb.host == "127.0.0.1"
        assert tb.edge_env()["COINFER_RATE_LIMIT"] == "2.0"
        assert any("token bucket" in n for n in tb.notes)
        pinned = [] if tb.edge_cpu is None else ["taskset", "-c", str(tb.edge_cpu)]
        assert tb.edge_command(["x"]) == [*pinned, "x"]


def test_dilated_edge_gets_its_speed_not_a_cgroup() -> None:
    with Testbed(APP, TestbedConfig(2.0, edge(0.25), force_loopback=True, start_cloud=False)) as tb:
        assert tb.edge.emulation == "dilate" and not tb.uses_cgroup
        assert tb.edge_env()["COINFER_SPEED"] == "0.25"
        assert tb.edge_command(["x"])[-1] == "x" and tb.throttle(os.getpid()) is False
        tb.set_edge_speed(0.5)
        assert tb.edge_env()["COINFER_SPEED"] == "0.5" and tb.edge == edge(0.5)
        with pytest.raises(CoInferError, match="speed: must be less than or equal to 1"):
            tb.set_edge_speed(2.0)
    with Testbed(APP, TestbedConfig(2.0, edge(None), force_loopback=True, start_cloud=False)) as tb:
        assert "COINFER_SPEED" not in tb.edge_env()
        with pytest.raises(CoInferError, match="edge is not slowed"):
            tb.set_edge_speed(0.5)
    with pytest.raises(CoInferError, match="a testbed's edge is a Device"):
        TestbedConfig(2.0, 0.5, force_loopback=True, start_cloud=False)  # type: ignore[arg-type]


def test_cli_needs_something_to_run() -> None:
    out = subprocess.run([sys.executable, "-m", "runtime.testbed", "--rate", "1mbit"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and out.stderr.startswith("error:")
