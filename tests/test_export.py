"""runtime.export: a split scheme as two TorchScript programs and a manifest; runtime.edge --artifact runs the head
from it importing no heavy module, against a real server, with the answers of the in-process model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import start_cloud_server

from cli.errors import CoInferError
from compress.scheme import Scheme
from runtime.artifact import load_artifact
from runtime.export import check_roundtrip, export
from runtime.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("optuna", "sqlalchemy", "sklearn", "pydantic", "matplotlib", "models.build", "apps.schema", "yaml")


@pytest.fixture(scope="module")
def artifact(tiny_app, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "split"
    export(tiny_app, Scheme(2, 3, 4), out, samples=8, finetune_missing=True)
    return out


def test_export_round_trips_to_1e5(tiny_app, artifact):
    from data import load_splits
    from runtime.artifact import HeadOf, TailOf
    from runtime.weights import scheme_model
    loaded = load_artifact(artifact)
    assert loaded.scheme == Scheme(2, 3, 4) and loaded.manifest["codec"] == "bitpack"
    model = scheme_model(tiny_app, Scheme(2, 3, 4))
    test = load_splits(tiny_app)[1]
    x = torch.stack([test[i][0] for i in range(16)])  # another batch size than the one traced
    assert check_roundtrip(loaded, HeadOf(model), TailOf(model), x) <= 1e-5
    assert loaded.manifest["weights"]["sha256"] and loaded.manifest["input"]["shape"] == [1, 32, 32]
    assert sorted(p.name for p in artifact.iterdir()) == ["cloud.pt", "edge.pt", "labels.npy", "manifest.json",
                                                          "samples.npy"]


def test_edge_artifact_imports_only_torch_and_numpy(tiny_app_path, artifact):
    """The edge process, run from the artifact against a server of the app, answers as in-process and never
    imports a heavy module."""
    proc, port = start_cloud_server("--app", tiny_app_path, "--no-finetuned")
    try:
        script = ("import sys, json, runtime.edge as e; "
                  "rc = e.main(['--artifact', sys.argv[1], '--server', sys.argv[2], '--json']); "
                  "print(json.dumps([m for m in sys.argv[3].split(',') if m in sys.modules]))")
        run = subprocess.run([sys.executable, "-c", script, str(artifact), f"127.0.0.1:{port}", ",".join(HEAVY)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert run.returncode == 0, run.stderr
    report, heavy = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    assert heavy == [] and report["requests"] == 8 and report["scheme"] == "2,3,4"


def test_a_changed_program_or_an_existing_folder_is_refused(tiny_app, artifact, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in artifact.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "cloud.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "cloud.pt").write_bytes(bytes(data))
    with pytest.raises(CoInferError, match="cloud.pt does not match the manifest's sha256"):
        load_artifact(copy)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CoInferError, match="exists"):
        export_main(["--app", str(tiny_app.source), "--scheme", "2,3,4", "--out", str(copy)])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left
