"""Access and compute on demand (issue 10): non-loopback binds need a token or --insecure; the token comes
from a flag, a file or $COINFER_TOKEN and is never printed; the server never fine-tunes on request
unless told to, and then boundedly and for authenticated clients only."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import start_cloud_server

from apps import load_app
from cli.errors import CoInferError
from compress.model import SchemeModel
from compress.scheme import Scheme
from database.scheme_weights import save_weights
from models.build import load_base_model
from runtime import edge
from runtime.client import ClientConfig
from runtime.cloud import CloudServer, ServerConfig, check_bind, is_loopback
from runtime.protocol import Error, ErrorCode, Hello, ProtocolError, encode, read_frame
from runtime.secret import ENV_TOKEN, resolve_token
from runtime.tails import TailCache, TailPolicy

torch.set_num_threads(1)
APP = load_app("vgg16_digits")
needs_checkpoint = pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-do-not-print"


def run(module: str, *argv: str) -> subprocess.CompletedProcess:
    """A CLI in a subprocess, without $COINFER_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k != ENV_TOKEN}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**env, "PYTHONPATH": str(ROOT)})


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1, out.stderr
    return out.stderr


# ------------------------------------------------------------------------------------ binding
@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
                                                ("10.1.2.3", False), ("192.0.2.1", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_token_or_insecure() -> None:
    with pytest.raises(CoInferError, match="non-loopback 0.0.0.0 without a token"):
        check_bind("0.0.0.0", ServerConfig())
    check_bind("0.0.0.0", ServerConfig(token="t"))  # allowed: not bound here (the tests stay on loopback)
    check_bind("10.1.2.3", ServerConfig(insecure=True))
    check_bind("127.0.0.1", ServerConfig())
    assert "--insecure" in one_line_error(run("runtime.cloud", "--host", "0.0.0.0", "--port", "0"))


@needs_checkpoint
def test_start_refuses_non_loopback_without_token() -> None:
    server = CloudServer(APP, ServerConfig(), load_base_model(APP))
    with pytest.raises(CoInferError, match="--insecure"):
        asyncio.run(server.start("0.0.0.0", 0))


# -------------------------------------------------------------------------------------- token
def test_resolve_token_sources(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {SECRET}\nsecond line ignored\n")
    assert resolve_token(None, str(path), environ={}) == SECRET
    assert resolve_token(None, None, environ={ENV_TOKEN: SECRET}) == SECRET
    assert resolve_token("flag", None, environ={ENV_TOKEN: SECRET}) == "flag"  # the flag wins over the environment
    assert resolve_token(None, str(path), environ={ENV_TOKEN: "other"}) == SECRET
    assert resolve_token(None, None, environ={}) is None
    for args, says in [(("a", str(path)), "not both"), ((None, str(tmp_path / "missing")), "cannot read"),
                       (("", None), "empty"), ((None, None), "empty")]:
        empty = tmp_path / "empty"
        empty.write_text("\n")
        with pytest.raises(CoInferError, match=says) as exc:
            resolve_token(*args, environ={ENV_TOKEN: " "})
        assert SECRET not in str(exc.value)
    with pytest.raises(CoInferError, match="is empty"):
        resolve_token(None, str(empty), environ={})


@needs_checkpoint
@pytest.mark.parametrize("source", ["env", "file"])
def test_cloud_and_edge_take_the_token_from_env_or_file(source: str, tmp_path, capsys, monkeypatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    args, env = (("--token-file", str(token_file)), {}) if source == "file" else ((), {ENV_TOKEN: SECRET})
    proc, port = start_cloud_server("--no-finetuned", *args, env=env, stderr=subprocess.PIPE)
    try:
        async def hello(token: bytes) -> object:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode(Hello("vgg16_digits", token, 7)))
            await writer.drain()
            answer = await read_frame(reader, timeout=5, idle_timeout=5)
            writer.close()
            return answer

        assert isinstance(asyncio.run(hello(SECRET.encode())), Hello)
        wrong = asyncio.run(hello(b"wrong"))
        assert isinstance(wrong, Error) and wrong.code == ErrorCode.AUTH_FAILED
        edge_args = ["--server", f"127.0.0.1:{port}", "--scheme", "4,12,3", "--n", "2", "--json", "--no-finetuned"]
        if source == "file":
            edge_args += ["--token-file", str(token_file)]
        else:
            monkeypatch.setenv(ENV_TOKEN, SECRET)
        assert edge.main(edge_args) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["requests"] == 2 and SECRET not in captured.out + captured.err
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "with token" in err
        assert SECRET not in out and SECRET not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("argv", [
    ["runtime.cloud", "--read-timeout", "nan"], ["runtime.cloud", "--idle-timeout", "nan"],
    ["runtime.cloud", "--read-timeout", "inf"], ["runtime.cloud", "--handshake-timeout", "0"],
    ["runtime.cloud", "--cache-mb", "nan"], ["runtime.cloud", "--finetune-on-request"],
    ["runtime.cloud", "--token", "a", "--token-file", "f"],
    ["runtime.edge", "--server", "127.0.0.1:9", "--scheme", "4,12,3", "--timeout", "nan"],
    ["runtime.edge", "--server", "127.0.0.1:9", "--scheme", "4,12,3", "--timeout", "inf"],
])
def test_bad_timeouts_and_token_options_are_one_line(argv: list[str]) -> None:
    one_line_error(run(*argv))


def test_client_config_timeout_must_be_finite() -> None:
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(CoInferError, match="finite"):
            ClientConfig(timeout=bad)


# ------------------------------------------------------------------------------ compute on demand
@pytest.fixture(scope="module")
def base():
    return load_base_model(APP)


@needs_checkpoint
def test_finetune_on_request_is_off_by_default(base, tmp_path, caplog, monkeypatch) -> None:
    """Without fine-tuned weights on disk the server serves the pruned base weights, says so (a WARNING
    and a counter) and fine-tunes nothing: no file written, the fine-tune never called."""
    import runtime.weights
    monkeypatch.setattr(runtime.weights, "finetune", lambda *a, **k: pytest.fail("fine-tuned on request"))
    assert not ServerConfig().finetune_on_request
    tails = TailCache(base, ServerConfig(finetuned=True, weights_root=str(tmp_path)).tail_policy, app=APP)
    scheme = Scheme(4, 12, 3)
    x = torch.rand(2, 12, 8, 8)
    with caplog.at_level(logging.WARNING, logger="coinfer.cloud"):
        tail = tails.get(scheme)
        tails.get(scheme)
    with torch.inference_mode():
        assert torch.equal(tail(x), SchemeModel(base, scheme).eval().tail(x))
    assert tails.stats["tails_base_fallback"] == 1 and "no fine-tuned weights" in caplog.text
    assert list(tmp_path.rglob("*.pt")) == []
    strict = TailCache(base, TailPolicy(finetuned=True, strict=True, weights_root=str(tmp_path)), app=APP)
    with pytest.raises(ProtocolError) as info:
        strict.get(scheme)
    assert info.value.code == ErrorCode.UNKNOWN_SCHEME
    with pytest.raises(CoInferError, match="needs a token"):
        ServerConfig(finetuned=True, finetune_on_request=True)


@needs_checkpoint
def test_existing_finetuned_weights_are_served(base, tmp_path) -> None:
    """A scheme whose fine-tuned file exists is served with it (loaded, not trained), also after a fallback."""
    import runtime.weights
    runtime.weights.clear_cache()
    scheme = Scheme(4, 12, 3)
    tails = TailCache(base, TailPolicy(finetuned=True, weights_root=str(tmp_path)), app=APP)
    tails.get(scheme)  # no file yet: base fallback
    model = SchemeModel(base, scheme)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_weights(APP, scheme, model.state_dict(), {"top1": 0.5}, tmp_path)
    tails._tails[scheme].built -= 10  # as if RECHECK_S had passed
    x = torch.rand(1, 12, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(tails.get(scheme)(x), model.eval().tail(x))
    assert tails.stats["tails_finetuned"] == 1 and not runtime.weights._cache  # bypasses the process-wide cache


@needs_checkpoint
def test_finetune_on_request_is_bounded(base, tmp_path, monkeypatch) -> None:
    """When enabled: one fine-tune at a time, at most `finetune_queue` waiting or running (then BUSY at
    once), and the tail cache bounded in bytes."""
    import runtime.weights
    gate = threading.Event()
    calls = []

    def slow_finetune(app, scheme, root=None, threads=1):  # in place of the child process: saves the file
        calls.append(scheme)
        gate.wait(10)
        save_weights(app, scheme, SchemeModel(base, scheme).state_dict(), {"top1": 0.5}, root)

    monkeypatch.setattr(runtime.weights, "finetune_apart", slow_finetune)
    config = ServerConfig(token="t", finetuned=True, finetune_on_request=True, finetune_queue=1,
                          weights_root=str(tmp_path), cache_bytes=1)
    tails = TailCache(base, config.tail_policy, app=APP)
    first = threading.Thread(target=tails.get, args=(Scheme(4, 12, 3),))
    first.start()
    while not calls:
        time.sleep(0.01)
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError) as info:
        tails.get(Scheme(4, 16, 3))
    assert info.value.code == ErrorCode.BUSY and time.perf_counter() - t0 < 1.0
    gate.set()
    first.join(10)
    tails.get(Scheme(4, 16, 3))
    assert calls == [Scheme(4, 12, 3), Scheme(4, 16, 3)] and tails.stats["finetunes"] == 2
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    assert len(tails) == 0 and tails.nbytes == 0  # each tail is over the 1-byte budget: served, not kept
    roomy = TailCache(base, TailPolicy(max_bytes=3 * 10**6, size=16), app=APP)
    for c in (8, 12, 16, 20, 24, 28, 32):
        roomy.get(Scheme(4, c, 8))
    assert 0 < roomy.nbytes <= 3 * 10**6 and len(roomy) < 7


def test_the_cli_parses_into_a_launch_and_its_server_config() -> None:
    from runtime.cloud import Launch, parse
    launch = parse(["--app", "vgg16_digits, twin", "--port", "0", "--threads", "2", "--batch-images", "8",
                    "--batch-wait-ms", "3", "--cache-mb", "1", "--max-clients", "5", "--no-finetuned", "--json"])
    assert (launch.apps, launch.host, launch.port, launch.threads, launch.json_logs) == \
        (("vgg16_digits", "twin"), "127.0.0.1", 0, 2, True)
    assert (launch.server.batch.max_images, launch.server.batch.max_wait_s) == (8, 0.003)
    assert (launch.server.cache_bytes, launch.server.max_clients, launch.server.finetuned) == (1 << 20, 5, False)
    with pytest.raises(CoInferError, match="outside 0..65535"):
        Launch(("vgg16_digits",), port=70000)
    with pytest.raises(CoInferError, match="without a token"):
        parse(["--host", "0.0.0.0"])


def test_finetune_apart_fine_tunes_in_a_child_and_saves_the_weights(tiny_app, tmp_path) -> None:
    """The cloud's fine-tune on request runs in a child process; the parent finds the weights file it saved (and
    its sidecar), and the scheme then loads from disk without training."""
    import runtime.weights
    scheme = Scheme(12, 2, 4)
    runtime.weights.finetune_apart(tiny_app, scheme, tmp_path)
    path = runtime.weights.scheme_path(tiny_app, scheme, tmp_path)
    assert path.is_file() and 0 <= runtime.weights.scheme_accuracy(tiny_app, scheme, tmp_path) <= 1
    model = runtime.weights.scheme_model(tiny_app, scheme, root=tmp_path, train=False, keep=False)
    assert torch.equal(model.state_dict()[next(iter(model.state_dict()))],
                       runtime.weights.load_state(path)[next(iter(model.state_dict()))])
    with pytest.raises(RuntimeError, match="failed in its process"):
        runtime.weights.finetune_apart(tiny_app, Scheme(99, 1, 1), tmp_path)  # no such point: the child fails
