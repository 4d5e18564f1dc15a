"""models.train --json: the accuracy it prints is the written checkpoint's."""

from __future__ import annotations

import json

import pytest

from apps import load_app
from models.train import main as train_main
from models.train import test_accuracy as top1_top5  # (not collected as a test)
from tests.conftest import write_tiny_app


def test_train_json_is_the_checkpoints_accuracy(tmp_path, capsys):
    app = load_app(write_tiny_app(tmp_path, train={"epochs": 1, "lr": 0.05, "batch_size": 32, "seed": 0}))
    out = tmp_path / "other.pt"
    assert train_main(["--app", str(tmp_path / "tiny_digits.yml"), "--out", str(out), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["app"] == "tiny_digits" and done["checkpoint"] == str(out) and done["train_s"] > 0
    from data import load_splits
    from models.build import load_base_model
    _, test = load_splits(app)
    top1, top5 = top1_top5(load_base_model(app, out), test)  # the file, loaded again
    assert done["test_images"] == len(test) == 200
    assert (done["top1"], done["top5"]) == pytest.approx((top1, top5), abs=1e-9)
