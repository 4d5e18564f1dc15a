"""The table of codecs: one registration per codec, every lookup reads it.

    from codec import registry
    registry.register(MyCodec())          # a new name and a new wire id
    registry.get("zstd"); registry.by_wire_id(1); registry.names()

`codec/__init__.py` registers the built-in ones (bitpack, zstd); a test or a plug-in may register
more at run time. Names are what `--codec` accepts and what the database stores; wire ids are the
REQUEST frame's flags byte (`runtime.protocol`), 0..255.
"""

from __future__ import annotations

from cli.errors import CoInferError
from codec.base import Codec

_BY_NAME: dict[str, Codec] = {}
_BY_ID: dict[int, Codec] = {}


def register(codec: Codec) -> Codec:
    """Add `codec` to the table; ValueError when its name or wire id is taken or out of range."""
    if not isinstance(codec, Codec):
        raise ValueError(f"{codec!r} is not a Codec")
    if not (isinstance(codec.wire_id, int) and 0 <= codec.wire_id <= 255):
        raise ValueError(f"codec {codec.name}: wire id {codec.wire_id!r} outside 0..255")
    if not codec.name or not codec.name.replace("-", "").isalnum() or codec.name in ("auto",):
        raise ValueError(f"codec name {codec.name!r}: letters, digits and '-' only, not 'auto'")
    if codec.name in _BY_NAME or codec.wire_id in _BY_ID:
        raise ValueError(f"codec {codec.name} (wire id {codec.wire_id}) clashes with "
                         f"{_BY_NAME.get(codec.name) or _BY_ID.get(codec.wire_id)}")
    _BY_NAME[codec.name] = _BY_ID[codec.wire_id] = codec
    return codec


def unregister(name: str) -> None:
    """Remove a codec registered at run time (a test's toy codec)."""
    codec = _BY_NAME.pop(name)
    del _BY_ID[codec.wire_id]


def get(name: str) -> Codec:
    """The codec called `name`; CoInferError naming the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CoInferError(f"unknown codec {name!r} (known: {', '.join(names())})") from None


def by_wire_id(wire_id: int) -> Codec | None:
    """The codec of a frame's flags byte, None when no codec has that id."""
    return _BY_ID.get(wire_id)


def names() -> list[str]:
    return list(_BY_NAME)


def codecs() -> list[Codec]:
    return list(_BY_NAME.values())
