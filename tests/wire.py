"""Raw frames and connections for the tests: a header rewritten field by field, and clients that do
what no EdgeClient does (connect from another loopback address, drip a frame byte by byte)."""

from __future__ import annotations

import asyncio
import time
import zlib

from runtime.protocol import HEADER, HEADER_SIZE, read_frame

FIELDS = ["magic", "version", "type", "flags", "bits", "request_id", "app", "p", "k", "c", "n", "ch", "h", "w",
          "body_len", "crc"]


def with_header(frame: bytes, fix_crc: bool = False, **changes: object) -> bytes:
    """The frame with some header fields replaced (by name, see FIELDS); body unchanged."""
    values = dict(zip(FIELDS, HEADER.unpack(frame[:HEADER_SIZE])))
    values.update(changes)
    body = frame[HEADER_SIZE:]
    if fix_crc:
        values["crc"] = zlib.crc32(body)
    return HEADER.pack(*(values[f] for f in FIELDS)) + body


async def connect_from(port: int, ip: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to 127.0.0.1:port from source address `ip` (any of 127.0.0.0/8: another peer)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))


async def answer_and_closed(reader: asyncio.StreamReader, wait: float = 5.0) -> tuple[object, bool]:
    """The server's next frame (None on EOF or a reset), and whether it then closed the connection."""
    try:
        answer = await read_frame(reader, timeout=wait, idle_timeout=wait)
    except OSError:
        return None, True
    try:
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except (TimeoutError, OSError):
        closed = False
    return answer, closed


async def drip(port: int, data: bytes, delay: float, ip: str = "127.0.0.1", wait: float = 10.0) -> tuple[object, float]:
    """Slowloris: `data` one byte every `delay` seconds until the server answers; returns its answer (None
    when the connection closed or was reset first) and the seconds from connecting. No answer within `wait`
    seconds raises ProtocolError TIMEOUT."""
    reader, writer = await connect_from(port, ip)
    t0 = time.perf_counter()
    read = asyncio.ensure_future(read_frame(reader, timeout=wait, idle_timeout=wait))
    for byte in data:
        if read.done():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except OSError:
            break
        await asyncio.sleep(delay)
    try:
        answer = await read
    except OSError:
        answer = None
    writer.close()
    return answer, time.perf_counter() - t0
