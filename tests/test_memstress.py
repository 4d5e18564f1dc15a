"""Memory stress of the edge: the cgroup v1 memory limit (devices.memlimit), the hog beside the edge
(devices.memhog), the testbed's --mem-limit / --mem-stress and their bad values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps import Device
from cli.errors import CoInferError
from devices.memlimit import group_path, memory_support, parse_size, rss, stats
from runtime.testbed import Testbed, TestbedConfig, check_memory

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
REASON = memory_support()
needs_memcg = pytest.mark.skipif(REASON is not None, reason=f"needs root and cgroup v1 memory: {REASON}")
MiB = 2**20


def test_parse_size() -> None:
    assert parse_size("512M") == 512 * MiB and parse_size("1g") == 2**30 and parse_size("64KiB") == 64 * 1024
    assert parse_size("1000") == 1000 and parse_size("1.5G") == 3 * 2**29
    with pytest.raises(CoInferError, match="a memory limit must be positive, got '0'"):
        parse_size("0")
    with pytest.raises(CoInferError, match="bad memory size 'lots'"):
        parse_size("lots")


def test_memory_values_are_checked() -> None:
    check_memory(512 * MiB, 0.5)
    check_memory(None, 0.0)
    with pytest.raises(CoInferError, match=r"--mem-stress is a share of the memory limit in \[0, 1\), got 1.5"):
        check_memory(512 * MiB, 1.5)
    with pytest.raises(CoInferError, match="--mem-stress is a share of --mem-limit: give --mem-limit too"):
        check_memory(None, 0.5)
    with pytest.raises(CoInferError, match="--mem-limit must be a positive size"):
        TestbedConfig(mem_limit=0)


@pytest.mark.parametrize("cli", ["runtime.testbed", "bench.adaptivity"])
@pytest.mark.parametrize("flags, message", [
    (["--mem-limit", "512M", "--mem-stress", "1.5"], "error: --mem-stress is a share of the memory limit in [0, 1)"),
    (["--mem-limit", "0"], "error: a memory limit must be positive, got '0'"),
])
def test_bad_memory_flags_are_one_line_exit_2(cli: str, flags: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", cli, *flags, "--verify" if cli == "runtime.testbed" else "--n",
                          *([] if cli == "runtime.testbed" else ["2"])],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr


@needs_memcg
@pytest.mark.root
@pytest.mark.slow
def test_hog_holds_its_share_and_the_edge_still_runs() -> None:
    """A 1 GiB edge group with a hog at 0.5: the hog's RSS is 512 MiB (within 4 %), it stays alive, the group
    never passes its limit, and an edge client (torch, the model, 3 requests) runs beside it."""
    limit = 1 << 30
    config = TestbedConfig(4.0, Device(name="cpu-edge", side="edge", speed=0.5), cloud_args=["--no-finetuned"],
                           mem_limit=limit, mem_stress=0.5)
    with Testbed("vgg16_digits", config) as tb:
        group = group_path(tb.group)
        assert int((group / "memory.limit_in_bytes").read_text()) == limit
        memsw = group / "memory.memsw.limit_in_bytes"
        assert not memsw.exists() or int(memsw.read_text()) == limit
        hog = tb.hog
        assert hog is not None and hog.alive()
        assert str(hog.pid) in (group / "cgroup.procs").read_text().split()
        assert abs(rss(hog.pid) - limit / 2) < 0.04 * limit / 2, rss(hog.pid)
        mark = tb.memory_mark()
        out = tb.run_edge([sys.executable, "-m", "runtime.edge", "--server", "{server}", "--scheme", "4,12,3",
                           "--n", "3", "--json", "--no-finetuned"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["requests"] == 3
        report = tb.memory_report(mark)
        assert report["hog_alive"] and report["hog_starts"] == 1 and report["oom_kills"] == 0, report
        assert abs(report["hog_rss"] - limit / 2) < 0.04 * limit / 2, report
        assert limit / 2 < report["group_peak"] <= limit, report  # the edge's pages were charged beside the hog
        assert stats(tb.group).limit == limit
        tb.set_memory_limit(768 * MiB)  # a new limit: the hog again at its share of it
        assert abs(rss(tb.hog.pid) - 384 * MiB) < 0.04 * 384 * MiB and tb.hog.starts == 2
    assert not group.exists() and not hog.alive()


@needs_memcg
@pytest.mark.root
def test_a_hog_too_big_for_its_group_is_killed_and_counted() -> None:
    """A 64 MiB group and a 100 MiB hog: the OOM killer takes the hog (oom_score_adj 1000) before it holds
    its memory; that is a measurement (not alive, one OOM kill), not an error."""
    from devices.memhog import MemHog
    from devices.memlimit import remove_group, set_group_limit
    group = f"coinfer-tb-{os.getpid()}-hogtest"
    set_group_limit(group, 64 * MiB)
    try:
        before = stats(group)
        hog = MemHog(100 * MiB, group)
        assert hog.start() == {"ready": False, "status": -9} and not hog.alive()
        after = stats(group).since(before)
        assert after.oom_kills == 1 and after.peak == 64 * MiB
    finally:
        remove_group(group)
    assert not group_path(group).exists()
