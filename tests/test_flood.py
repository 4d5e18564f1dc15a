"""A short bench.flood: 100 idle connections and a reconnect flood for a few seconds; the authenticated
edge client's every request succeeds and the server's memory stays bounded."""

from __future__ import annotations

import pytest

from apps import load_app
from bench.flood import FloodConfig, report, run_flood, verdicts

APP = load_app("vgg16_digits")


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_short_flood() -> None:
    cfg = FloodConfig(idle=100, idle_peers=10, flooders=4, flood_s=3.0, flood_rate=100.0, quiet_s=1.5, after_s=1.0)
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
