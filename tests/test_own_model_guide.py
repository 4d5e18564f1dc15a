"""docs/own-model.md runs as written: its marked blocks, in order, on a fixture made here.

The guide marks what it runs with an HTML comment before a fenced block:

    <!-- guide-test: yaml PATH -->   the app YAML, written to PATH
    <!-- guide-test: run -->         shell commands, each block run with bash -e; each must exit 0
    <!-- guide-test: server -->      the cloud server, started in the background until the client is done
    <!-- guide-test: client -->      the edge, run against that server

The fixture: an image folder of 3 classes x 12 generated 32x32 images (checks, horizontal and vertical stripes of
random period, phase and colour, plus noise) and a state-dict file of the app's model (seeded, saved here) as the
"pretrained" weights. The guide's folder, `/data/tinyr18`, becomes a temporary one, and the server's port 5000 one
the OS picks (the server says which): nothing is written into the repository (checked).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "own-model.md"
FOLDER = "/data/tinyr18"  # the guide's folder: every path of it becomes the test's temporary folder
PORT = "5000"  # the guide's server port: the test's server takes a free one
BLOCK = re.compile(r"<!-- guide-test: (\w+)(?: (\S+))? -->\n```\w*\n(.*?)```", re.S)
pytestmark = pytest.mark.slow


def guide_blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, argument, body) of every marked block, in order."""
    return [(kind, arg, body) for kind, arg, body in BLOCK.findall(text)]


def make_images(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> None:
    """root/<class>/NN.png: checks, horizontal stripes, vertical stripes, each of random period, phase and colour."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    for k, name in enumerate(("checks", "hstripes", "vstripes")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            half = 2 + i % 4
            dx, dy = rng.integers(0, 2 * half, 2)
            pattern = [((x + dx) // half + (y + dy) // half) % 2, ((y + dy) // half) % 2, ((x + dx) // half) % 2][k]
            image = pattern[..., None] * rng.uniform(0.3, 1.0, 3) * 255 + rng.normal(0, 10, (size, size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")


def save_weights(app_yaml: Path, out: Path) -> None:
    """A state dict of the app's model (as `torch.save(model.state_dict(), ...)` writes one), seeded."""
    import torch

    from apps import load_app
    from models.build import build_model
    torch.manual_seed(1)
    torch.save(build_model(replace(load_app(str(app_yaml)), weights=None)).state_dict(), out)


def _repo_state(app: str) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file git does not ignore, of the shipped database and the files beside it, and of
    the app's default fine-tuned weights folder: to see that nothing is written into the repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    out = {}
    for name in [*listed, "database/coinfer.sqlite", "database/coinfer.studies.journal",
                 "database/coinfer.queue.sqlite", f"checkpoints/schemes/{app}", f"checkpoints/{app}.pt"]:
        path = ROOT / name
        if path.exists():
            st = path.stat()
            out[name] = (st.st_size, st.st_mtime_ns)
    return out


def test_the_guide_runs_as_written(tmp_path) -> None:
    text = GUIDE.read_text()
    assert FOLDER in text and f"--port {PORT}" in text and f"127.0.0.1:{PORT}" in text
    blocks = guide_blocks(text)
    kinds = [kind for kind, _, _ in blocks]
    name = yaml.safe_load(blocks[0][2])["name"]
    assert kinds[0] == "yaml" and kinds.count("server") == 1 and kinds[-2:] == ["server", "client"], kinds
    folder = tmp_path / "tinyr18"
    folder.mkdir()
    local = str(folder)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    before = _repo_state(name)
    outputs: list[tuple[str, str]] = []  # (commands, stdout with the seconds they took)
    for kind, arg, body in blocks[:-2]:
        body = body.replace(FOLDER, local)
        if kind == "yaml":
            Path(arg.replace(FOLDER, local)).write_text(body)
            make_images(folder / "images")
            save_weights(folder / "tinyr18.yml", folder / "pretrained.pt")
            continue
        assert kind == "run", kind
        start = time.perf_counter()
        done = subprocess.run(["bash", "-e", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{body}\n{done.stdout}\n{done.stderr}"
        outputs.append((body, f"{done.stdout}({time.perf_counter() - start:.1f} s)"))
    said = {re.sub(r"^(\w+=\S+ )*python ", "", cmd.split(" --app")[0]): out for cmd, out in outputs}  # no env prefix
    assert "base top-1" in said["-m models.train"] and (folder / "tinyr18.pt").is_file()
    assert "certified   yes" in said["latency_search.py"], said["latency_search.py"]
    assert f"app {name}: 9 partition points" in said["-m reports.show"]

    from runtime.ready import wait_ready
    server = blocks[-2][2].replace(FOLDER, local).replace(f"--port {PORT}", "--port 0")
    proc = subprocess.Popen(["bash", "-e", "-c", server], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = wait_ready(proc, 120, "the guide's cloud server")["port"]
        client = blocks[-1][2].replace(FOLDER, local).replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}")
        edge = subprocess.run(["bash", "-e", "-c", client], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the guide stops it: a clean stop, exit 0
        stats, log = proc.communicate(timeout=60)
    assert edge.returncode == 0, f"{client}\n{edge.stdout}\n{edge.stderr}"
    assert re.search(r"^scheme \S+: 5 requests, one image each$", edge.stdout, re.M), edge.stdout
    assert "accuracy of the predictions that came back" in edge.stdout
    assert proc.returncode == 0 and "requests=5" in stats, (proc.returncode, stats, log[-2000:])
    if os.environ.get("COINFER_GUIDE_OUT"):  # the outputs the guide quotes
        Path(os.environ["COINFER_GUIDE_OUT"]).write_text(
            "\n\n".join(f"$ {cmd}\n{out}" for cmd, out in [*outputs, (client, edge.stdout)]).replace(local, FOLDER))
    assert _repo_state(name) == before  # everything went to the temporary folder
