"""bench.search on the tiny app's complete table: --json holds the facts of the text table."""

from __future__ import annotations

import json

import pytest

from bench import search as bench_search


@pytest.fixture
def argv(tiny_app_path, tiny_db, tmp_path, monkeypatch) -> list[str]:
    monkeypatch.setattr(bench_search, "OUT", tmp_path)  # the plot goes here, not under bench/out/
    return ["--app", tiny_app_path, "--storage", tiny_db, "--samplers", "coinfer", "--quick", "--no-synthetic",
            "--workers", "1"]


def test_json_has_the_text_tables_facts(argv, capsys, tmp_path) -> None:
    assert bench_search.main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("bench.search: tiny_digits, space ")  # the header is a note: stderr
    data = json.loads(out)
    assert data["app"] == "tiny_digits" and data["plot"] == str(tmp_path / "search.png")
    [suite] = data["suites"]
    # the split schemes: 13 points of 2,2,4,4,8,8,8,16,16,16,16,16,16 channels at 8 bit widths
    assert suite["suite"] == "default" and suite["space_size"] == 8 * 132
    assert suite["queries"] == 16  # 4 losses + 4 ratios, at 0.5 and 2 Mbps (--quick)
    [row] = suite["samplers"]
    assert row["sampler"] == "coinfer" and row["runs"] == 16
    assert row["optimum_pct"] == 100.0 and data["coinfer_missed"] == []

    assert bench_search.main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("bench.search: tiny_digits, space 1056 schemes")
    assert text[2] == "complete tiny_digits table (16 queries):"
    cells = text[4].split()
    assert cells[:3] == ["coinfer", "16", "100.0"]
    assert float(cells[3]) == pytest.approx(row["certified_pct"], abs=0.05)
    assert int(cells[5]) == row["max_evaluations"]
    assert text[-1].startswith("wall ") and text[-1].endswith(f"plot: {tmp_path / 'search.png'}")


@pytest.mark.parametrize("text", ["-", "point:x", "1,,2", "0", "nan", "1,-2"])
def test_bad_gp_bandwidths_are_one_line(text) -> None:
    from cli.errors import CoInferError
    with pytest.raises(CoInferError) as exc:
        bench_search.parse_args([f"--gp-bandwidths={text}"])
    assert str(exc.value) == f"--gp-bandwidths must be positive numbers (Mbps) separated by commas, got {text!r}"
    assert bench_search.parse_bandwidths("0.5,2") == (0.5, 2.0)
