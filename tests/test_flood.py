"""A short bench.flood: 100 idle connections and a reconnect flood for a few seconds; the authenticated
edge client's every request succeeds and the server's memory stays bounded; and its CLI flags build
the FloodConfig."""

from __future__ import annotations

import shutil

import pytest

import bench.flood
from apps import load_app
from bench.flood import FloodConfig, report, run_flood, verdicts

APP = load_app("vgg16_digits")


def test_cli_flags_build_the_config(monkeypatch) -> None:
    """No flag: FloodConfig's defaults; each flag sets its own field."""
    runs = []
    monkeypatch.setattr(bench.flood, "run_flood", lambda cfg: runs.append(cfg) or {})
    monkeypatch.setattr(bench.flood, "report", lambda result: [])
    monkeypatch.setattr(bench.flood, "verdicts", lambda result: {})
    bench.flood.main([])
    bench.flood.main(["--idle", "7", "--idle-peers", "3", "--flooders", "0", "--flood-s", "1.5", "--flood-rate", "0",
                      "--quiet-s", "2", "--interval", "0.5", "--tls-stall", "9", "--settle-s", "4"])
    assert runs == [FloodConfig(), FloodConfig(idle=7, idle_peers=3, flooders=0, flood_s=1.5, flood_rate=0.0,
                                               quiet_s=2.0, interval=0.5, tls_stall=9, settle_s=4.0)]


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_short_flood() -> None:
    cfg = FloodConfig(idle=100, idle_peers=10, flooders=4, flood_s=3.0, flood_rate=100.0, quiet_s=1.5, after_s=1.0,
                      settle_s=4.0)
    result = run_flood(cfg)
    lines = report(result)
    assert any(line.startswith("server RSS") for line in lines)
    checks = verdicts(result)
    assert checks["every authenticated request succeeded"], lines
    assert checks["RSS grew less than 200 MB"], lines
    # the attack happened and was handled by admission, not by refusing the client
    assert result["attack"]["idle_connects"] >= 100 and result["attack"]["flood_connects"] > 0, lines
    stats = result["server_stats"]
    assert stats.get("auth_failed", 0) > 0 and stats.get("refused_busy", 0) == 0, lines
    assert result["during"]["ok"] > 0 and result["during"]["reconnects"] > 0, lines


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_short_tls_stall() -> None:
    """--tls-stall: a TLS server, 200 stalled handshakes beside the idle connections; the TLS client is served
    and the stalled handshakes went through admission (dropped at the handshake deadline)."""
    cfg = FloodConfig(idle=50, idle_peers=10, flooders=2, flood_s=3.0, flood_rate=50.0, quiet_s=1.5, after_s=1.0,
                      tls_stall=200, settle_s=4.0)
    result = run_flood(cfg)
    lines = report(result)
    assert verdicts(result)["every authenticated request succeeded"], lines
    assert result["attack"]["tls_stall_connects"] >= 200, lines
    stats = result["server_stats"]
    assert stats.get("tls_timeout", 0) > 0 and stats.get("refused_busy", 0) == 0, lines
    assert any("stalled TLS handshakes" in line for line in lines), lines
