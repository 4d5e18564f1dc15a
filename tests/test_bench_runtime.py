"""bench.runtime's confidence band and its table (the run itself needs the testbed: see the closing notes)."""

from bench.runtime import band, format_table


def test_band_spans_the_rounds_and_widens_by_the_drift() -> None:
    assert band([0.010, 0.012, 0.011], 0.0) == (0.010, 0.012)
    lo, hi = band([0.010, 0.012], 0.25)
    assert abs(lo - 0.008) < 1e-12 and abs(hi - 0.015) < 1e-12


def _row(scheme: str, predicted: float, median: float, in_band: bool) -> dict:
    stage = {"edge": predicted / 2, "transfer": predicted / 4, "cloud": predicted / 4}
    return {"rate_mbps": 1.0, "scheme": scheme, "predicted_s": predicted, "median_s": median, "p90_s": median,
            "mean_s": median, "error": abs(median - predicted) / median, "error_mean": abs(median - predicted) / median,
            "stage_predicted_s": stage, "stage_median_s": stage, "frame_bytes": 100, "model_bytes": 90,
            "wire_ok": True, "reference_s": [0.002, 0.0025], "drift": 0.25, "in_band": in_band}


def test_table_counts_hits_and_reports_the_drift() -> None:
    text = format_table([_row("1,5,1", 0.010, 0.0105, True), _row("all-edge", 0.010, 0.020, False)])
    assert "median: 1/2 within 10%" in text
    assert "2.00, 2.50 ms -> drift 25%" in text
    assert "predictions: 1/2" in text
    assert text.splitlines()[3].endswith(" *")  # the missed row is flagged
