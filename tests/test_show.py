"""reports.show: one-sided devices explained, the paper's all-cloud, and the scheme-space plot."""

from __future__ import annotations

import pytest

from cli.errors import CoInferError
from reports.show import main as show_main
from reports.space_plot import pareto


def test_plot_is_written_with_the_query_answer(tiny_app, tiny_app_path, tiny_db, tmp_path, capsys, monkeypatch):
    import reports.figure
    from database.store import Store
    from search.latency import LatencyModel
    from search.problem import Problem
    from search.query import LatencyQuery
    from tests.oracles import brute_force
    figures, save = [], reports.figure.save_figure
    monkeypatch.setattr(reports.figure, "save_figure", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    png = tmp_path / "space.png"
    assert show_main(["--app", tiny_app_path, "--storage", tiny_db, "--plot", str(png), "--bandwidth", "0.5",
                      "--accuracy-loss", "0.02"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # what is drawn: every stored scheme, the threshold at 90 - 2 %, and the brute-force answer as the star
    store = Store(tiny_db)
    table = store.accuracy_table(tiny_app.name)
    problem = Problem(LatencyQuery(0.02, 0.5), LatencyModel.from_store(store, tiny_app), 0.9)
    expected = brute_force(problem, table)
    (ax,) = figures[0].axes
    marks = {c.get_label().split(" (")[0]: c.get_offsets() for c in ax.collections}
    assert len(marks["stored schemes"]) == len(table) == 8 * sum(pt.channels for pt in problem.space.points)
    (star,) = marks[f"answer {expected}"]
    assert star.tolist() == pytest.approx([1e3 * problem.latency_of(expected), 100 * table[expected]])
    (threshold,) = [line for line in ax.get_lines() if line.get_label().startswith("accuracy threshold")]
    assert list(threshold.get_ydata()) == pytest.approx([88.0, 88.0])
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
