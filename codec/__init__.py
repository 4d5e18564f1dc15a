"""The cut as plug-ins: how the quantised activation at the cut is written on the wire.

    from codec import BITPACK, get
    body = get("zstd").encode(activation, bits)          # edge: quantise + encode
    a = get("zstd").decode(body, shape, bits)            # cloud: decode + dequantise

`Codec` (codec/base.py) is the interface, `codec.registry` the table (name and wire id -> codec);
the built-in codecs are registered here: `bitpack` (wire id 0, exact size) and `zstd` (wire id 1,
entropy coded, size profiled per (p, c, b): `codec.sizes`). Adding a codec is one module and one
`registry.register(...)` line below (tests/test_codec_plugin.py registers a toy one at run time).
"""

from __future__ import annotations

from codec import registry
from codec.base import Codec, Size
from codec.bitpack import BitPack
from codec.registry import by_wire_id, get, names
from codec.zstd import Zstd

BITPACK = registry.register(BitPack())
ZSTD = registry.register(Zstd())

__all__ = ["BITPACK", "ZSTD", "Codec", "Size", "by_wire_id", "get", "names", "registry"]
