"""The cloud server in-process on vgg16_digits: correct answers while hostile clients misbehave."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import serving, start_cloud_server

from apps import load_app
from cli.errors import CoInferError
from compress.model import SchemeModel
from compress.quant import dequantize, quantize
from compress.scheme import ALL_CLOUD, ALL_EDGE, Scheme
from data import load_splits
from models.build import load_base_model
from runtime import edge
from runtime.client import ClientConfig, EdgeClient, RemoteError
from runtime.cloud import CloudServer, ServerConfig, serve
from runtime.protocol import (
    HEADER_SIZE,
    Error,
    ErrorCode,
    Hello,
    Reply,
    Request,
    encode,
    encode_activation,
    read_frame,
)
from tests.wire import answer_and_closed, connect_from, drip, with_header

torch.set_num_threads(1)
APP = load_app("vgg16_digits")
pytestmark = pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
SCHEMES = [Scheme(2, 10, 4), Scheme(4, 12, 3), Scheme(12, 64, 1), ALL_CLOUD]


@pytest.fixture(scope="module")
def base():
    return load_base_model(APP)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    test = load_splits(APP)[1]
    return torch.stack([test[i][0] for i in range(8)])


def reference(base, scheme: Scheme, x: torch.Tensor, k: int = 3) -> tuple[list[list[int]], list[list[float]]]:
    """The same scheme run locally in one process: SchemeModel forward (quantise-dequantise at the cut)."""
    with torch.inference_mode():
        if scheme.is_all_cloud:
            logits = base(dequantize(*quantize(x, 8)))
        else:
            logits = SchemeModel(base, scheme).eval()(x)
        scores, classes = torch.softmax(logits, 1).topk(k, 1)
    return classes.tolist(), scores.tolist()


def valid_request(p: int = 4, c: int = 12, bits: int = 3, rid: int = 1, app: str = "vgg16_digits") -> bytes:
    side = {2: 16, 4: 8}[p]
    codes, lo, scale = quantize(torch.rand(1, c, side, side), bits)
    return encode(Request(rid, app, p, c, bits, 3, (1, c, side, side), encode_activation(codes, lo, scale, bits)))


async def exchange(port: int, data: bytes, half_close: bool = False) -> tuple[object, bool]:
    """Send raw bytes; return (the server's answer, whether the server then closed the connection)."""
    reader, writer = await connect_from(port)
    writer.write(data)
    await writer.drain()
    if half_close:
        writer.write_eof()
    answer, closed = await answer_and_closed(reader)
    writer.close()
    return answer, closed


async def expect_error(port: int, data: bytes, code: ErrorCode, closes: bool = True, half_close: bool = False) -> None:
    answer, closed = await exchange(port, data, half_close)
    assert isinstance(answer, Error) and answer.code == code, answer
    assert closed == closes


async def abrupt(port: int, data: bytes) -> None:
    """Send part of a frame (or a whole request) and reset the connection without reading."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST
    writer.transport.abort()


async def attackers(port: int) -> None:
    req = valid_request()
    await expect_error(port, req[:30], ErrorCode.TRUNCATED, half_close=True)
    await expect_error(port, req[:-5], ErrorCode.TRUNCATED, half_close=True)
    await expect_error(port, with_header(req, magic=b"HTTP"), ErrorCode.BAD_MAGIC)
    await expect_error(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40), ErrorCode.BAD_MAGIC)
    await expect_error(port, with_header(req, version=7), ErrorCode.BAD_VERSION)
    await expect_error(port, with_header(req, body_len=0xFFFFFFFF), ErrorCode.BAD_LENGTH)
    await expect_error(port, with_header(req, n=64, c=64, ch=64, h=256, w=256), ErrorCode.BAD_FIELD)
    await expect_error(port, with_header(req, crc=zlib.crc32(req[HEADER_SIZE:]) ^ 0xFF), ErrorCode.BAD_CRC)
    await expect_error(port, encode(Reply(1, "vgg16_digits", 0, 1, 1, ((1,),), ((1.0,),), 0, 0)), ErrorCode.UNEXPECTED)
    body = bytearray(req[HEADER_SIZE:])
    struct.pack_into("<f", body, 12 * 4, float("nan"))  # first scale
    await expect_error(port, with_header(req[:HEADER_SIZE] + bytes(body), fix_crc=True), ErrorCode.BAD_FIELD)
    # well-formed but unanswerable: ERROR, and the connection stays open for the next request
    await expect_error(port, valid_request(p=4, c=40), ErrorCode.UNKNOWN_SCHEME, closes=False)
    await expect_error(port, valid_request(app="resnet_cars"), ErrorCode.UNKNOWN_APP, closes=False)
    await expect_error(port, with_header(valid_request(p=2, c=12), p=4), ErrorCode.BAD_SHAPE, closes=False)
    answer, _ = await exchange(port, valid_request(p=4, c=40, rid=5) + valid_request(rid=6))
    assert isinstance(answer, Error) and answer.request_id == 5
    await abrupt(port, req[:HEADER_SIZE + 3])
    await abrupt(port, req)  # the reply has nowhere to go
    await abrupt(port, b"")


async def good_client(base, images: torch.Tensor, port: int, until: asyncio.Future, expected: dict) -> int:
    """Valid requests over every scheme until the attackers are done; every answer checked."""
    clients = [EdgeClient(APP, s, ClientConfig(port=port, k=3, timeout=10), base=base) for s in SCHEMES]
    answered = 0
    for client in clients:
        await client.connect()
    try:
        while not until.done() or answered < 2 * len(SCHEMES) * len(images):
            i = answered % len(images)
            client = clients[(answered // len(images)) % len(clients)]
            pred = await client.infer(images[i:i + 1])
            classes, scores = expected[client.scheme][0][i], expected[client.scheme][1][i]
            assert pred.classes[0][0] == classes[0], (client.scheme, i)
            assert pred.scores[0] == pytest.approx(scores, abs=1e-4), (client.scheme, i)
            assert pred.timings.bytes_up > HEADER_SIZE and pred.timings.cloud_compute_s > 0
            answered += 1
            await asyncio.sleep(0.005)
    finally:
        for client in clients:
            await client.close()
    return answered


def test_serves_correctly_under_attack(base, images) -> None:
    expected = {}
    for s in SCHEMES:
        classes, scores = reference(base, s, images)
        expected[s] = (classes, scores)

    async def main() -> None:
        async with serving(APP, ServerConfig(read_timeout=0.4, idle_timeout=5.0), base) as server:
            port = server.port
            attack = asyncio.ensure_future(asyncio.gather(
                attackers(port), drip(port, valid_request(), 0.05), drip(port, b"COIN\x01", 0.3)))
            answered = await good_client(base, images, port, attack, expected)
            _, (slow, slow_t), (idle, idle_t) = attack.result()
            assert isinstance(slow, Error) and slow.code == ErrorCode.TIMEOUT and slow_t < 2.0
            assert isinstance(idle, Error) and idle.code == ErrorCode.TIMEOUT and idle_t < 2.0
            assert answered >= 2 * len(SCHEMES) * len(images)
            # still serving at the end, on a fresh connection
            async with EdgeClient(APP, SCHEMES[1], ClientConfig(port=port, k=3), base=base) as client:
                pred = await client.infer(images[:1])
            assert pred.classes[0][0] == expected[SCHEMES[1]][0][0][0]
            stats = server.stats
            assert stats["replies"] >= answered + 1
            for code in ("truncated", "bad_magic", "bad_version", "bad_length", "bad_field", "bad_crc", "timeout",
                         "unexpected", "unknown_scheme", "unknown_app", "bad_shape"):
                assert stats[f"error_{code}"] >= 1, code
            assert stats["error_internal"] == 0
        assert server.stats["requests"] >= answered

    asyncio.run(main())


def test_batch_request_and_all_edge(base, images) -> None:
    async def main() -> None:
        async with serving(APP, base=base) as server:
            async with EdgeClient(APP, SCHEMES[0], ClientConfig(port=server.port, k=3), base=base) as client:
                pred = await client.infer(images)
        assert [row[0] for row in pred.classes] == [row[0] for row in reference(base, SCHEMES[0], images)[0]]
        async with EdgeClient(APP, ALL_EDGE, ClientConfig(k=3), base=base) as local:  # no server, no network
            here = await local.infer(images)
        with torch.inference_mode():
            assert [row[0] for row in here.classes] == base(images).argmax(1).tolist()
        assert here.timings.bytes_up == 0

    asyncio.run(main())


def test_token(base, images, caplog) -> None:
    async def main() -> None:
        async with serving(APP, ServerConfig(token="s3cret"), base) as server:
            port = server.port
            with pytest.raises(RemoteError) as info:
                async with EdgeClient(APP, SCHEMES[1], ClientConfig(port=port), base=base) as client:
                    await client.infer(images[:1])
            assert info.value.code == ErrorCode.AUTH_REQUIRED
            with pytest.raises(RemoteError) as info:
                async with EdgeClient(APP, SCHEMES[1], ClientConfig(port=port, token="s3cret!"), base=base):
                    pass
            assert info.value.code == ErrorCode.AUTH_FAILED
            await expect_error(port, encode(Hello("vgg16_digits", b"")), ErrorCode.AUTH_REQUIRED)  # no token given
            async with EdgeClient(APP, SCHEMES[1], ClientConfig(port=port, token="s3cret"), base=base) as client:
                pred = await client.infer(images[:1])
            assert pred.classes[0][0] == reference(base, SCHEMES[1], images[:1])[0][0][0]
            assert server.stats["auth_failed"] == 3

    asyncio.run(main())
    assert "AUTH_FAILED" in caplog.text and "AUTH_REQUIRED" in caplog.text


def test_max_clients(base, images) -> None:
    async def main() -> None:
        async with serving(APP, ServerConfig(max_clients=1), base) as server:
            async with EdgeClient(APP, SCHEMES[1], ClientConfig(port=server.port), base=base) as first:
                await first.infer(images[:1])
                await expect_error(server.port, valid_request(), ErrorCode.BUSY)
                await first.infer(images[:1])
            assert server.stats["refused_busy"] == 1 and server.stats["replies"] == 2

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls(base, images, tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with serving(APP, ServerConfig(token="t", tls_cert=str(cert), tls_key=str(key)), base) as server:
            config = ClientConfig(port=server.port, token="t", ssl_ctx=client_ctx)
            async with EdgeClient(APP, SCHEMES[1], config, base=base) as client:
                pred = await client.infer(images[:2])
            assert [r[0] for r in pred.classes] == [r[0] for r in reference(base, SCHEMES[1], images[:2])[0]]
            with pytest.raises(CoInferError, match="cannot connect to .*CERTIFICATE_VERIFY_FAILED"):  # untrusting
                untrusting = ClientConfig(port=server.port, ssl_ctx=ssl.create_default_context())
                async with EdgeClient(APP, SCHEMES[1], untrusting, base=base):
                    pass

    asyncio.run(main())


def test_serve_stops_on_event(base, images) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve(APP, ServerConfig(), "127.0.0.1", 0, stop=stop, base=base))
        await asyncio.sleep(0.2)
        stop.set()
        server = await asyncio.wait_for(task, 10)
        assert server.stats["requests"] == 0

    asyncio.run(main())


def test_shutdown_finishes_requests_in_flight(base, images, monkeypatch) -> None:
    import runtime.batching
    compute = runtime.batching.compute
    monkeypatch.setattr(runtime.batching, "compute", lambda *args: (time.sleep(0.3), compute(*args))[1])  # slow

    async def main() -> None:
        server = CloudServer(APP, base=base)
        await server.start("127.0.0.1", 0)
        idle = EdgeClient(APP, SCHEMES[1], ClientConfig(port=server.port), base=base)
        busy = EdgeClient(APP, SCHEMES[1], ClientConfig(port=server.port), base=base)
        await idle.connect()
        await busy.connect()
        infer = asyncio.ensure_future(busy.infer(images[:1]))
        while server.stats["requests"] == 0:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await server.close(grace=5)
        assert time.perf_counter() - t0 < 2
        pred = await infer  # the request in flight was answered before the connection closed
        assert pred.classes[0][0] == reference(base, SCHEMES[1], images[:1])[0][0][0]
        for client in (idle, busy):
            with pytest.raises(CoInferError, match="^server closed the connection$|^connection to .* lost: "):
                await client.infer(images[:1])
            await client.close()

    asyncio.run(main())


def test_cli_end_to_end(capsys) -> None:
    """python -m runtime.cloud in a subprocess, the edge CLI against it, then SIGTERM: clean exit with stats."""
    proc, port = start_cloud_server()
    try:
        assert edge.main(["--server", f"127.0.0.1:{port}", "--scheme", "4,12,3", "--n", "5", "--json",
                          "--finetune-missing"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["requests"] == 5 and 0 <= report["accuracy"] <= 1
        assert report["bytes_up"] == HEADER_SIZE + 12 * 8 + (12 * 8 * 8 * 3 + 7) // 8
        with pytest.raises(CoInferError, match=r"channels 99 outside 1\.\.32 at point 4"):
            edge.main(["--server", f"127.0.0.1:{port}", "--scheme", "4,99,3", "--n", "1"])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert json.loads(out)["replies"] == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_announces_ready_on_stdout_and_logs_on_stderr() -> None:
    """The first stdout line of `python -m runtime.cloud --port 0` is the readiness JSON, and its port answers."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cloud", "--port", "0", "--threads", "1", "--no-finetuned"],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready == {"ready": True, "host": "127.0.0.1", "port": ready["port"], "app": "vgg16_digits"}
        assert ready["port"] > 0

        async def hello() -> object:
            reader, writer = await asyncio.open_connection(ready["host"], ready["port"])
            writer.write(encode(Hello("vgg16_digits", request_id=3)))
            await writer.drain()
            answer = await read_frame(reader, timeout=5, idle_timeout=5)
            writer.close()
            return answer

        answer = asyncio.run(hello())
        assert isinstance(answer, Hello) and answer.request_id == 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "serving app vgg16_digits" in err and "ready" not in err
        assert out.strip() == "connections=1"  # the final stats, after the readiness line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
