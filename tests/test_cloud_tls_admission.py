"""Rule 8 of issue 21: TLS handshakes are admitted like any pending connection (the pool, the per-address cap
and the pre-auth deadline count from the accept, before TLS), and many authenticated clients behind one
address are all served."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import serving

from apps import load_app
from compress.scheme import Scheme
from data import load_splits
from models.build import load_base_model
from runtime.client import ClientConfig, EdgeClient
from runtime.cloud import ServerConfig
from tests.wire import connect_from

torch.set_num_threads(1)
APP = load_app("vgg16_digits")
SCHEME = Scheme(4, 12, 3)
pytestmark = [pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained"),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")]
# the first bytes of a TLS record carrying a ClientHello (handshake, TLS 1.0 record version, 512 bytes), cut short
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.fixture(scope="module")
def base():
    return load_base_model(APP)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return load_splits(APP)[1][0][0].unsqueeze(0)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path, ssl.SSLContext]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key, ssl.create_default_context(cafile=str(cert))


async def _closed_after(reader: asyncio.StreamReader, wait: float) -> float | None:
    """Seconds until the server closed this connection (EOF or reset), None when it did not within `wait`."""
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(reader.read(), wait)
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.perf_counter() - t0


def test_stalled_tls_handshakes_are_admitted_as_pending(base, image, tls) -> None:
    """12 connections that never finish a TLS handshake (6 send nothing, 6 a partial ClientHello) from 3 addresses,
    against a pending pool of 4 with a per-address cap of 2: at most 4 are ever held, the rest are refused or drop
    older ones at once, every held one is dropped at the 0.6 s handshake deadline (not after read_timeout's 10 s),
    and an authenticated TLS client is served all along."""
    cert, key, client_ctx = tls

    async def main() -> None:
        config = ServerConfig(token="t0k", tls_cert=str(cert), tls_key=str(key), max_pending=4, max_pending_per_peer=2,
                              handshake_timeout=0.6, read_timeout=10)
        async with serving(APP, config, base) as server:
            stalled = []
            for i in range(12):
                reader, writer = await connect_from(server.port, f"127.0.0.{2 + i % 3}")
                if i % 2:
                    writer.write(PARTIAL_CLIENT_HELLO)
                stalled.append((reader, writer))
                await asyncio.sleep(0.01)
                assert len(server.admission.pending) <= 4
            assert server.stats["connections"] == 12
            assert server.stats["refused_peer"] + server.stats["evicted_pending"] == 8  # 12 in, 4 held
            async with EdgeClient(APP, SCHEME, ClientConfig(port=server.port, token="t0k", ssl_ctx=client_ctx, k=1),
                                  base=base) as client:
                for _ in range(3):
                    assert len((await client.infer(image)).classes) == 1
            closed = await asyncio.gather(*(_closed_after(r, 3.0) for r, _ in stalled))
            assert all(t is not None for t in closed), closed  # every one closed by the server within 3 s
            assert server.stats["tls_timeout"] >= 3 and server.stats["handshake_timeout"] == server.stats["tls_timeout"]
            assert len(server.admission) == 0 and server.stats["replies"] == 3
            for _, w in stalled:
                w.close()

    asyncio.run(main())


@pytest.mark.parametrize("with_tls", [False, True])
def test_64_clients_at_once_from_one_address_with_a_token_are_all_served(base, image, tls, with_tls) -> None:
    """README: with a token, clients behind one NAT address are not capped per address. 64 connect at the same
    time from 127.0.0.1 (all pending at once, 8 times the per-address pending cap) and each is served."""
    cert, key, client_ctx = tls

    async def main() -> None:
        config = ServerConfig(token="t0k", **({"tls_cert": str(cert), "tls_key": str(key)} if with_tls else {}))
        async with serving(APP, config, base) as server:
            clients = [EdgeClient(APP, SCHEME, ClientConfig(port=server.port, token="t0k", k=1,
                                                            ssl_ctx=client_ctx if with_tls else None), base=base)
                       for _ in range(64)]
            await asyncio.gather(*(c.connect() for c in clients))
            assert len(server.admission.established) == 64
            answers = await asyncio.gather(*(c.infer(image) for c in clients))
            assert all(len(a.classes) == 1 for a in answers)
            await asyncio.gather(*(c.close() for c in clients))
            assert server.stats["refused_peer"] == 0 and server.stats["refused_busy"] == 0
            assert server.stats["replies"] == 64

    asyncio.run(main())
