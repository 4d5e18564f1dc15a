"""reports.show: one-sided devices explained, the paper's all-cloud, and the scheme-space plot."""

from __future__ import annotations

import pytest

from cli.errors import CoInferError
from reports.show import main as show_main
from reports.space_plot import pareto


def test_plot_is_written_with_the_query_answer(tiny_app_path, tiny_db, tmp_path, capsys):
    png = tmp_path / "space.png"
    assert show_main(["--app", tiny_app_path, "--storage", tiny_db, "--plot", str(png), "--bandwidth", "0.5",
                      "--accuracy-loss", "0.02"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "schemes of tiny_digits at 0.5 Mbps" in capsys.readouterr().out
    with pytest.raises(CoInferError, match="--bandwidth"):
        show_main(["--app", tiny_app_path, "--storage", tiny_db, "--plot", str(png)])


def test_pareto_keeps_only_undominated_points():
    assert pareto([(3, 0.9), (1, 0.5), (2, 0.5), (2, 0.7), (4, 0.8)]) == [(1, 0.5), (2, 0.7), (3, 0.9)]


def test_one_sided_devices_are_explained(tmp_path, capsys):
    from database.paper import import_paper_profile
    from database.store import Store
    db = str(tmp_path / "paper.sqlite")
    import_paper_profile(Store(db))
    assert show_main(["--storage", db, "--app", "vgg16_cars"]) == 0
    out = capsys.readouterr().out
    assert "cloud only: use it as CLOUD" in out and "edge only: use it as EDGE" in out
    assert "whole model on cloud side 0.00 ms" not in out and "transfer only" in out
