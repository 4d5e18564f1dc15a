"""The GPU path (models/accel.py): its configuration on any machine; a fine-tune on a GPU when one is present."""

from __future__ import annotations

import pytest
import torch

from cli.errors import CoInferError
from compress.scheme import Scheme
from models.accel import COMPILE_MIN_STEPS, Accel

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_cpu_keeps_the_plain_fp32_loop():
    a = Accel.for_device("cpu")
    assert (a.amp, a.channels_last, a.pin_memory, a.loader_workers, a.data_on_device) == ("off", False, False, 0, False)
    assert not a.compiles(10**6) and a.dtype() is None


def test_cuda_defaults_pick_bf16_where_supported_else_fp16_with_a_scaler():
    bf = Accel.for_device("cuda", bf16_supported=True, loader_workers=4)
    fp = Accel.for_device("cuda:1", bf16_supported=False)
    assert bf.amp == "bf16" and bf.dtype() == torch.bfloat16 and fp.amp == "fp16" and fp.dtype() == torch.float16
    assert bf.channels_last and bf.cudnn_benchmark and bf.pin_memory and bf.data_on_device and bf.loader_workers == 4
    assert bf.compiles(COMPILE_MIN_STEPS) and not bf.compiles(12)  # a 25-epoch fine-tune compiles, 12 steps do not
    assert Accel.for_device("cuda", amp="off", compile="off", bf16_supported=True).dtype() is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(device="cpu", amp="bf16"), "need a CUDA device"),
    (dict(device="cpu", channels_last=True), "need a CUDA device"),
    (dict(device="cuda", amp="int8"), "amp"),
    (dict(device="cuda", compile="maybe"), "compile"),
])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(CoInferError, match=match):
        Accel(**kwargs)


def test_cli_refuses_a_gpu_that_is_not_there(tiny_app_path, tmp_path, capsys):
    from cli.run import run_cli
    from database.evaluate import main
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--app", tiny_app_path, "--schemes", "0,1,1", "--torch-device", "cuda", "--storage",
                       str(tmp_path / "x.sqlite")])
    assert exc.value.code == 2 and "--torch-device cuda: no such CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize(("flags", "says"), [
    (["--torch-device", "gpu"], "--torch-device 'gpu': expected cpu, cuda or cuda:N"),
    (["--device", "cuda"], "--device names a profiled device: the torch device to fine-tune on is --torch-device"),
    (["--torch-device", "cuda", "--evaluator", "synthetic"], "--evaluator synthetic does not fine-tune"),
])
def test_cli_torch_device_flag_is_one_spelling(tiny_app_path, tmp_path, capsys, flags, says):
    from cli.run import run_cli
    from database.evaluate import main
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--app", tiny_app_path, "--schemes", "0,1,1", *flags, "--storage", str(tmp_path / "x.sqlite")])
    assert exc.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


@needs_gpu
def test_a_gpu_fine_tune_matches_the_cpu_within_a_few_test_images(tiny_app):
    from database.finetune import SchemeFinetuner
    cpu = SchemeFinetuner(tiny_app).finetune_row(Scheme(6, 4, 4))
    gpu = SchemeFinetuner(tiny_app, accel=Accel.for_device("cuda")).finetune_row(Scheme(6, 4, 4))
    assert abs(gpu.top1 - cpu.top1) <= 0.05  # reduced precision and another shuffle order: close, not equal


@needs_gpu
def test_a_gpu_profile_records_the_device_fingerprint():
    from devices.fingerprint import fingerprint
    fp = fingerprint("cuda")
    assert fp["gpu"] and fp["gpu_detail"]["capability"] and fp["gpu_detail"]["memory_gib"] > 0


@pytest.mark.parametrize(("torch_device", "gpu", "says"), [
    ("cuda:x", None, "--torch-device 'cuda:x': expected cpu, cuda or cuda:N"),
    ("cuda:0", 0, "-gpu N is --torch-device cuda:N: give one of them"),
    ("cpu", -1, "-gpu -1: no such CUDA device on this machine"),
    ("cpu", 999, "-gpu 999: no such CUDA device on this machine"),
    ("cuda:999", None, "--torch-device cuda:999: no such CUDA device on this machine"),
])
def test_the_searches_take_gpu_as_an_alias_of_torch_device(torch_device, gpu, says):
    from devices.torch_device import torch_device_of
    with pytest.raises(CoInferError, match=says.replace("(", r"\(")):
        torch_device_of(torch_device, gpu)
    assert torch_device_of("cpu", None) == "cpu"


def test_the_searches_need_the_gpu_only_for_a_fine_tune(tiny_app_path, tiny_db, tmp_path):
    """-gpu 0 on a machine without one: an answer the database gives needs no GPU (exit 0); a search that
    must fine-tune is refused in one line before it does (exit 2), and stores nothing."""
    import shutil
    import sqlite3
    import subprocess
    import sys

    from apps import REPO_ROOT
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    db = tmp_path / "copy.sqlite"
    shutil.copy(tiny_db, db)
    args = [sys.executable, "latency_search.py", "-accuracy_loss", "0.05", "-bandwidth", "1", "-gpu", "0",
            "--app", tiny_app_path, "--storage", str(db), "--latency-profile", "tiny-edge,tiny-cloud",
            "--study-storage", "memory", "--no-progress"]
    answered = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert answered.returncode == 0, answered.stderr
    assert "evaluations 0 new" in answered.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM accuracy")
    refused = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert (refused.returncode, refused.stderr) == (2, "error: --torch-device cuda:0: no such CUDA device on this "
                                                       "machine\n")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accuracy").fetchone() == (0,)
