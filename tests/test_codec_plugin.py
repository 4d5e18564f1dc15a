"""Adding a codec is one module and one registration: a toy codec (one byte per code, no packing),
defined and registered here and nowhere else, crosses the real wire, server and client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from conftest import serving

import codec
from apps import load_app
from codec.base import Codec
from compress.scheme import Scheme
from data import load_splits
from models.build import load_base_model
from runtime.client import ClientConfig, EdgeClient, RemoteError
from runtime.protocol import ErrorCode, Request, decode, decode_request, encode, encode_activation

APP = load_app("vgg16_digits")


class Plain8(Codec):
    """The codes one byte each: n bytes, whatever b."""

    name = "plain8"
    wire_id = 0x50
    exact = True

    def encode_codes(self, codes: np.ndarray, bits: int) -> bytes:
        return np.ascontiguousarray(codes, dtype=np.uint8).tobytes()

    def decode_codes(self, payload, bits: int, n: int) -> np.ndarray:
        if len(payload) != n:
            raise ValueError(f"plain8 payload of {len(payload)} bytes, {n} codes")
        return np.frombuffer(payload, dtype=np.uint8).copy()

    def payload_bound(self, n, bits):
        return n


@pytest.fixture
def plain8():
    toy = codec.registry.register(Plain8())
    yield toy
    codec.registry.unregister(toy.name)


def test_toy_codec_round_trips_through_the_protocol(plain8) -> None:
    x = torch.relu(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0)))
    from compress.quant import dequantize, quantize
    req = Request(3, APP.name, 4, 4, 3, 2, (1, 4, 6, 6), encode_activation(*quantize(x, 3), 3, plain8), plain8.wire_id)
    frame = encode(req)
    assert len(frame) == 48 + 4 * 8 + 4 * 36  # header, parameters, one byte per code
    got = decode(frame)
    assert got == req and got.codec is plain8
    assert torch.equal(decode_request(got), dequantize(*quantize(x, 3)))  # the cloud's decode path


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_toy_codec_through_the_server_and_client(plain8) -> None:
    base = load_base_model(APP)
    test = load_splits(APP)[1]
    x = torch.stack([test[i][0] for i in range(4)])
    scheme = Scheme(4, 12, 3)

    async def go():
        async with serving(APP, base=base) as server:
            answers = {}
            for name in ("bitpack", "plain8", "zstd"):
                config = ClientConfig(port=server.port, k=3, timeout=30, codec=name)
                async with EdgeClient(APP, scheme, config, base=base) as client:
                    answers[name] = [await client.infer(x[i:i + 1]) for i in range(len(x))]
            codec.registry.unregister("plain8")  # the server no longer knows it: ERROR, connection kept
            try:
                config = ClientConfig(port=server.port, k=3, timeout=30, codec="zstd")
                async with EdgeClient(APP, scheme, config, base=base) as client:
                    await client.connect()
                    writer = client._writer
                    client._codec = plain8  # a client that knows a codec the server does not
                    with pytest.raises(RemoteError) as info:
                        await client.infer(x[:1])
                    assert info.value.code == ErrorCode.UNKNOWN_CODEC
                    client._codec = codec.ZSTD
                    again = await client.infer(x[:1])
                    assert client._writer is writer and not writer.is_closing()  # the same connection
            finally:
                codec.registry.register(plain8)
            return answers, again

    with torch.inference_mode():
        answers, again = asyncio.run(go())
    for name in ("plain8", "zstd"):  # lossless codecs: the same answers as bitpack's
        assert [a.classes for a in answers[name]] == [a.classes for a in answers["bitpack"]]
        assert [a.scores for a in answers[name]] == [a.scores for a in answers["bitpack"]]
    assert again.classes == answers["bitpack"][0].classes
    sent = {name: [a.timings.bytes_up for a in answers[name]] for name in answers}
    assert all(p > b for p, b in zip(sent["plain8"], sent["bitpack"]))  # 8 bits a code against 3
