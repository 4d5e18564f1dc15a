"""The runtime's frozen configs: built once, checked once, a bad value is one CoInferError line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps import Device
from cli.errors import CoInferError
from runtime.cloud import ServerConfig
from runtime.testbed import TestbedConfig

ROOT = Path(__file__).resolve().parents[1]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_server_config_defaults_and_frozen() -> None:
    config = ServerConfig()
    assert (config.read_timeout, config.idle_timeout, config.max_clients, config.workers) == (10.0, 300.0, 64, 1)
    assert config.token is None and not config.finetuned
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]
    assert dataclasses.replace(config, workers=3).workers == 3


@pytest.mark.parametrize(("changes", "says"), [
    ({"read_timeout": 0}, "read_timeout"), ({"idle_timeout": -1.0}, "idle_timeout"),
    ({"write_timeout": float("nan")}, "write_timeout"), ({"max_clients": 0}, "max_clients"),
    ({"max_batch": 2.5}, "max_batch"), ({"cache_size": 0}, "cache_size"), ({"workers": -3}, "workers"),
    ({"tls_cert": "cert.pem"}, "tls_key"), ({"token": ""}, "token"),
])
def test_server_config_bad_values(changes: dict, says: str) -> None:
    with pytest.raises(CoInferError) as exc:
        ServerConfig(**changes)
    assert says in one_line(exc)


def test_testbed_config_defaults_and_frozen() -> None:
    config = TestbedConfig(2.0, Device(name="e", speed=0.25), cloud_args=["--no-finetuned"])
    assert config.cloud_args == ("--no-finetuned",) and config.link == "tbf" and config.edge.emulation == "dilate"
    assert TestbedConfig().edge == Device(name="cpu-edge", side="edge", speed=0.125, emulation="dilate")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate_mbps = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):  # all but the rate and the edge device by name
        TestbedConfig(2.0, Device(name="e"), None)  # type: ignore[misc]


@pytest.mark.parametrize(("changes", "says"), [
    ({"rate_mbps": 0.0}, "Mbps"), ({"reverse_mbps": -1.0}, "Mbps"), ({"rate_mbps": float("inf")}, "Mbps"),
    ({"link": "fiber"}, "unknown link"), ({"edge": 0.125}, "a testbed's edge is a Device"),
])
def test_testbed_config_bad_values(changes: dict, says: str) -> None:
    with pytest.raises(CoInferError) as exc:
        TestbedConfig(**{"rate_mbps": 1.0, **changes})
    assert says in one_line(exc)


@pytest.mark.parametrize("argv", [
    ["runtime.cloud", "--workers", "0"], ["runtime.cloud", "--tls-key", "k.pem"], ["runtime.cloud", "--port", "x"],
    ["runtime.testbed", "--rate", "fast", "--verify"], ["runtime.testbed", "--link", "x", "--verify"],
    ["runtime.testbed", "--speed", "-1", "--verify", "--no-keep-warm"],
    ["runtime.testbed", "--speed", "0.5", "--full-speed", "--verify", "--no-keep-warm"],
    ["runtime.testbed", "--emulation", "nice", "--verify", "--no-keep-warm"],
])
def test_cli_bad_values_are_one_line(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1, out.stderr
