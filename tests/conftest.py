"""Shared fixtures: a tiny digits app (VGG-16 topology at width 1/32) with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)


def write_tiny_app(folder: Path, name: str = "tiny_digits", **overrides) -> Path:
    app = {
        "name": name,
        "model": {"arch": "vgg16_bn", "width": 1 / 32, "input_size": 32, "in_channels": 1,
                  "num_classes": 10, "classifier_hidden": 16},
        "dataset": {"name": "digits", "test_size": 200, "split_seed": 0, "limit_train": 300},
        "train": {"epochs": 3, "lr": 0.05, "batch_size": 32, "seed": 0},
        "protocol": {"epochs": 1, "lr": 0.01, "schedule": "linear", "batch_size": 64, "seed": 0},
        "devices": {"edge": {"name": "tiny-edge", "cpu_quota": 0.5}, "cloud": {"name": "tiny-cloud"}},
        "raw_input_bytes": 1024,
        "rtt_s": 0.0,
        "checkpoint": str(folder / f"{name}.pt"),
    }
    app.update(overrides)
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(app))
    return path


@pytest.fixture(scope="session")
def tiny_app_path(tmp_path_factory) -> str:
    """Path of a tiny digits app YAML whose checkpoint has been trained (a few seconds)."""
    from models.train import main as train_main
    folder = tmp_path_factory.mktemp("tiny_app")
    path = write_tiny_app(folder)
    train_main(["--app", str(path)])
    return str(path)


@pytest.fixture(scope="session")
def tiny_app(tiny_app_path):
    from apps import load_app
    return load_app(tiny_app_path)


def start_cloud_server(*args: str):
    """`python -m runtime.cloud` on 127.0.0.1 at a port the OS picks: (process, port) once it says it is
    ready (its readiness line on stdout; its log goes to this process's stderr). The caller stops it (SIGTERM)."""
    import os
    import subprocess
    import sys

    from runtime.ready import wait_ready
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cloud", "--port", "0", "--json", "--threads", "1", *args],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, text=True)
    try:
        return proc, wait_ready(proc, 120, "the cloud server")["port"]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
