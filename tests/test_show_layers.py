"""reports.show --layers (reports/layers.py): each cut's kind, output shape and bytes, edge and cloud time, checked
against the shipped database read with sqlite3; an app without a profile (a clear line per side); and one whose
device has layer samples only (the predictor's times, then the stored predicted profile's)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.errors import CoInferError
from reports.show import main as show_main

SHIPPED = Path(__file__).resolve().parents[1] / "database" / "coinfer.sqlite"


def shipped(query: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{SHIPPED}?mode=ro", uri=True) as conn:
        return conn.execute(query, args).fetchall()


def latency(app: str, device: str, side: str, point: int, channels: int) -> float:
    (row,) = shipped("SELECT median_s FROM layer_latency WHERE app=? AND device=? AND side=? AND point=? AND "
                     "channels=?", app, device, side, point, channels)
    return row[0]


def test_layers_of_the_shipped_vgg16_digits(capsys) -> None:
    assert show_main(["--app", "vgg16_digits", "--layers", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    shapes = shipped("SELECT point, name, channels, height, width FROM point_shape WHERE app='vgg16_digits' "
                     "ORDER BY point")
    rows = out["layers"]
    assert [r["point"] for r in rows] == [-1, *[s[0] for s in shapes], len(shapes)]
    assert rows[0]["shape"] == [1, 32, 32] and rows[0]["bytes"] == 4 * 32 * 32
    assert rows[0]["edge_s"] == latency("vgg16_digits", "cpu-edge", "edge", -1, 1)
    assert rows[0]["cloud_s"] == latency("vgg16_digits", "cpu-cloud", "cloud", -1, 1)
    for row, (p, name, c, h, w) in zip(rows[1:], shapes):
        assert (row["name"], row["shape"], row["bytes"]) == (name, [c, h, w], 4 * c * h * w)
        assert row["wire_bytes"] == -(-h * w * c * 8 // 8) + 8 * c  # codes at 8 bits, then lo and scale per channel
        assert row["edge_s"] == latency("vgg16_digits", "cpu-edge", "edge", p, c)
        assert row["cloud_s"] == latency("vgg16_digits", "cpu-cloud", "cloud", p, c)
        # a VGG block: conv, batch norm, ReLU, and the max-pool where the point's name says so
        assert row["kind"] == "conv+bn+act" + ("+pool" if name.endswith("+pool") else "")
    last = rows[-1]
    assert last["name"] == "output" and last["shape"] == [10] and last["cloud_s"] is None and last["wire_bytes"] == 0
    assert last["edge_s"] == latency("vgg16_digits", "cpu-edge", "edge", len(shapes), 10)
    assert last["kind"].endswith("linear")
    for side, device in (("edge", "cpu-edge"), ("cloud", "cpu-cloud")):
        src = out["sides"][side]
        assert (src["device"], src["how"]) == (device, "profile")
        (fingerprint,) = shipped("SELECT fingerprint FROM device WHERE name=?", device)
        assert src["provenance"]["fingerprint"]["cpu_model"] == json.loads(fingerprint[0])["cpu_model"]
        assert src["provenance"]["source"] == "device"  # the shipped database predates provenance rows

    assert show_main(["--app", "vgg16_digits", "--layers"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "app vgg16_digits: 13 partition points"
    assert text[1].startswith("  edge (cpu-edge): profile, measured on AMD EPYC, 2 CPUs, slowed to 0.125, 2026-")
    assert text[2].startswith("  cloud (cpu-cloud): profile, measured on AMD EPYC, 2 CPUs, 2026-")
    assert len(text) == 3 + 1 + 15 and text[5].split()[:4] == ["0", "conv1_1", "conv+bn+act", "8x32x32"]


def test_an_app_without_a_profile_says_so(capsys) -> None:
    assert show_main(["--app", "resnet18_cars", "--layers", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {s["how"] for s in out["sides"].values()} == {"none"}
    assert all(r["edge_s"] is None and r["cloud_s"] is None for r in out["layers"])
    assert out["sides"]["edge"]["note"].startswith("no edge profile of pi-paper for resnet18_cars (profiled: none)")
    assert "python -m database.predictor fit --device pi-paper" in out["sides"]["edge"]["note"]
    first = out["layers"][1]  # ResNet-18's stem at 224 x 224: conv, BN, ReLU, max-pool to 64 x 56 x 56
    assert (first["name"], first["kind"], first["shape"]) == ("maxpool", "conv+bn+act+pool", [64, 56, 56])
    assert show_main(["--app", "resnet18_cars", "--layers"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].startswith("  edge (pi-paper): no edge profile of pi-paper for resnet18_cars")
    assert all(line.split()[-2:] == ["-", "-"] for line in text[4:])


def test_flags(capsys) -> None:
    with pytest.raises(CoInferError, match="--layers needs --app A"):
        show_main(["--layers"])
    with pytest.raises(CoInferError, match="--latency-profile goes with --plot or --layers"):
        show_main(["--app", "vgg16_digits", "--latency-profile", "cpu-edge,cpu-cloud"])
    with pytest.raises(CoInferError, match="--latency-profile takes EDGE,CLOUD"):
        show_main(["--app", "vgg16_digits", "--layers", "--latency-profile", "cpu-edge"])


@pytest.mark.slow
def test_predictor_when_no_profile_then_the_stored_prediction(tiny_app, tiny_app_path, tmp_path, capsys) -> None:
    """Layer samples only (synthetic times: 20 us + 1 ns per multiply-accumulate): the report predicts now, marked
    `predictor`; its whole-model time is near the samples' sum; after `predict` stores the profile it reads those
    rows, marked `predicted profile`, and they are the same numbers."""
    import torch

    from database.layerprof import LayerSample, model_layers
    from database.predictor import LatencyPredictor, app_example_shape, store_predicted
    from database.store import Store
    from models.build import app_points, build_model
    db = str(tmp_path / "p.sqlite")
    store = Store(db)
    layers = model_layers(build_model(tiny_app).eval(), torch.zeros(app_example_shape(tiny_app)))
    samples = [LayerSample(device, "tiny", layer, 2e-5 + 1e-9 * layer.flops)
               for device in (tiny_app.edge_device, tiny_app.cloud_device) for layer in layers]
    store.put_layer_samples(samples)
    assert show_main(["--app", tiny_app_path, "--storage", db, "--layers", "--json"]) == 0
    now = json.loads(capsys.readouterr().out)
    assert {s["how"] for s in now["sides"].values()} == {"predictor"}
    whole = sum(s.seconds for s in samples if s.device == tiny_app.edge_device)
    assert now["layers"][-1]["edge_s"] == pytest.approx(whole, rel=0.3)
    assert all(r["edge_s"] > 0 for r in now["layers"]) and all(r["cloud_s"] > 0 for r in now["layers"][:-1])

    predictor = LatencyPredictor.fit(store.layer_samples(tiny_app.edge_device))
    store_predicted(store, tiny_app, tiny_app.edge_device, ("edge",), predictor)
    assert show_main(["--app", tiny_app_path, "--storage", db, "--layers", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert stored["sides"]["edge"]["how"] == "predicted profile" and stored["sides"]["cloud"]["how"] == "predictor"
    rows = {(r.point, r.channels): r.median_s for r in store.latency_rows(tiny_app.name, tiny_app.edge_device)}
    full = [(-1, tiny_app.in_channels), *((p.index, p.channels) for p in app_points(tiny_app)),
            (len(app_points(tiny_app)), tiny_app.num_classes)]
    assert [r["edge_s"] for r in stored["layers"]] == [rows[k] for k in full]
    assert [r["edge_s"] for r in stored["layers"]] == pytest.approx([r["edge_s"] for r in now["layers"]], rel=1e-9)
