"""`select_model.py --testbed`: both VnV choices as real requests over the testbed (runtime.vnv_testbed).

Runs everywhere: with root, ip and tc the link is a tbf-shaped veth between two namespaces; without them the
testbed falls back to loopback and the edge client's token bucket, and the report says which it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_tiny_app

from apps import REPO_ROOT, Device
from compress.activation import frame_on_wire
from compress.scheme import Scheme
from runtime.netns import netns_support
from runtime.vnv import RunConfig, measure
from runtime.vnv_testbed import measure_testbed

LINK = "netns+tbf" if netns_support() is None else "loopback+token bucket"


@pytest.fixture
def schemes_dir(tmp_path, monkeypatch):
    """Fine-tuned scheme weights in a temporary folder (the testbed's processes inherit the variable)."""
    monkeypatch.setenv("COINFER_SCHEMES_DIR", str(tmp_path / "schemes"))
    from runtime.weights import clear_cache
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def other_tiny_app_path(tmp_path_factory) -> str:
    """A second tiny digits app (another name, its own checkpoint): the two choices are two apps."""
    from models.train import main as train_main
    path = write_tiny_app(tmp_path_factory.mktemp("tiny2"), name="tiny2_digits")
    train_main(["--app", str(path)])
    return str(path)


def test_testbed_runs_both_choices_image_by_image_and_agrees_with_in_process_predictions(tiny_app, tiny_app_path,
                                                                                         other_tiny_app_path,
                                                                                         schemes_dir):
    from apps import load_app
    n = 4
    other = load_app(other_tiny_app_path)
    choices = ((tiny_app, Scheme.ALL_EDGE), (other, Scheme.ALL_CLOUD))  # one edge worker each, one cloud for both
    config = RunConfig(Device(name="tiny-edge", speed=0.5), 2.0, n, warmup=1, keep_warm=False, progress=False)
    report = measure_testbed(*choices, config, refs={tiny_app.name: tiny_app_path, other.name: other_tiny_app_path})
    assert (report.baseline.app, report.advanced.app) == ("tiny_digits", "tiny2_digits")
    assert report.how == f"testbed: {LINK} at 2 Mbps, edge at speed 0.5"
    edge, cloud = report.baseline, report.advanced
    for m in (edge, cloud):
        assert len(m.seconds) == len(m.correct) == n and all(t > 0 for t in m.seconds)
        assert 0 <= m.accuracy <= 1
    assert edge.link_s == edge.cloud_s == 0 and edge.wire_bytes == 0  # all-edge: no request goes out
    assert cloud.link_s > 0 and cloud.cloud_s > 0 and cloud.edge_s > 0
    assert cloud.wire_bytes >= frame_on_wire(other.link, other.raw_input_bytes)  # the 8-bit image and more
    # the same images through the same models: the in-process path gets the same right and wrong answers
    local = measure(*choices, RunConfig(Device(name="tiny-edge"), 2.0, n, warmup=0, keep_warm=False, progress=False))
    assert local.how == "in-process"
    assert (edge.correct, cloud.correct) == (local.baseline.correct, local.advanced.correct)
    assert report.to_json()["measured"].startswith("testbed: ")


def test_cli_testbed_json(tiny_app_path, tiny_db, schemes_dir):
    proc = subprocess.run([sys.executable, "select_model.py", "--apps", tiny_app_path, "--bandwidth", "2",
                           "--storage", tiny_db, "--images", "4", "--testbed", "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    out = json.loads(proc.stdout)
    vnv, selection = out["vnv"], out["selection"]
    assert vnv["measured"] == f"testbed: {LINK} at 2 Mbps, edge at speed 0.5"  # tiny-edge: speed 0.5, dilate
    assert vnv["images"] == 4
    for side, chosen in (("t_b", "greedy"), ("t_a", "budgeted")):
        assert vnv[side]["scheme"] == selection[chosen]["scheme"]
        assert 0 <= vnv[side]["accuracy"] <= 1 and vnv[side]["median_s"] > 0 and vnv[side]["mean_s"] > 0
    # the verdict follows from the numbers printed, against the criteria written out here (20 % saving, 10 % accuracy)
    assert vnv["criteria"] == {"saving_min": 0.20, "accuracy_diff_max": 0.10}
    assert vnv["accuracy_diff"] == pytest.approx(vnv["t_b"]["accuracy"] - vnv["t_a"]["accuracy"])
    assert all(4 * vnv[side]["accuracy"] == int(4 * vnv[side]["accuracy"]) for side in ("t_b", "t_a"))  # of 4 images
    verdict = vnv["saving"] >= 0.20 and vnv["accuracy_diff"] <= 0.10
    assert vnv["pass"] == verdict and proc.returncode == (0 if verdict else 1), (proc.returncode, vnv)
