"""The latency model L(s, B) over the latency database.

    L(p, c, b; B) = T_edge(p, c) + wire(ceil(H_p W_p c b / 8) + 8 c) / B + RTT + T_cloud(p, c)
    all-edge      = T_edge(whole model)
    all-cloud     = T_edge(raw input) + wire(raw_input_bytes) / B + RTT + T_cloud(whole model)
    wire(n)       = n + m + h * ceil((n + m) / mss)       (the app's `link`: m, h, mss)

The payload ceil(H_p W_p c b / 8) + 8 c and wire(n) are `compress.activation.payload_bytes` and
`wire_bytes`, the sizes the runtime's frames have. That payload is bitpack's (`codec`, the default);
under another codec the payload is the codec's `size` (`--codec`): exact for an exact codec, for a
data-dependent one (zstd) the mean body of one image measured on the app's test images per (p, c, b)
(`database.codecprof`, stored in the database beside the latency profile; `bytes_p95` keeps the 95th
percentile). Every codec is lossless over the quantised symbols, so the accuracy of (p, c, b) is the
same under each: one accuracy row serves them all.

Bandwidth follows the paper: B in Mbps, bytes/s = Mbps * 2^20 / 8. T_edge(p, c) and
T_cloud(p, c) are medians measured at a few kept-channel counts c per point (pruning's compute
effect) and linearly interpolated in between. The edge side includes quantisation + packing,
the cloud side unpacking + dequantisation, as profiled by `database.profile`; T_edge(raw input)
is the edge quantising and packing the input for all-cloud (0 when the profile lacks it).
wire(n) adds the runtime's frame header m once and the transport's headers h per segment (an
app without a `link` section: n itself). RTT is the measured round trip of an empty message
(`--rtt`; the app's `rtt_s` by default).

What it ignores: the reply (a few dozen bytes), TCP slow start and queueing, the dependence of
pack/unpack time on the bit width b (profiled at 8 bits) and on the codec (profiled with bitpack; a
zstd frame takes longer to encode and decode: `python -m bench.codec`), run-to-run variance (medians only),
and contention between concurrent requests. Devices imported with `formula: optcoinfer-paper`
use the paper's own model: no per-channel header, no link overhead, exact fractional bytes, no
edge or cloud compute for all-cloud.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apps import App, Link
from apps.units import bytes_per_second
from cli.errors import CoInferError
from codec import BITPACK, Codec
from codec import get as get_codec
from codec.sizes import SizeTable
from compress.activation import frame_on_wire, wire_bytes
from compress.scheme import Scheme
from database.store import LatencyRow, Store
from models.build import app_points
from models.points import PartitionPoint
from search.space import Space

PAPER_FORMULA = "optcoinfer-paper"


class ProfileGap(CoInferError):
    """A device's stored profile of an app lacks rows the latency model needs: the whole side (`from_store`), a
    whole model or a point's rows. `device` and `side` say which; the message ends with the command that
    measures it."""

    def __init__(self, message: str, device: str, side: str) -> None:
        super().__init__(message)
        self.device, self.side = device, side


@dataclass(frozen=True)
class Breakdown:
    edge: float
    transfer: float  # wire bytes / bandwidth + RTT
    cloud: float
    bytes: float  # payload: the activation (codes + per-channel parameters) or the raw input
    wire: float = 0.0  # bytes on the link: payload + frame + transport headers

    @property
    def total(self) -> float:
        return self.edge + self.transfer + self.cloud

    def as_dict(self) -> dict:
        return {"edge": self.edge, "transfer": self.transfer, "cloud": self.cloud, "total": self.total}


class LatencyModel:
    """Latency of every scheme of an app for one (edge device, cloud device) pair."""

    def __init__(self, points: list[PartitionPoint], edge_rows: list[LatencyRow], cloud_rows: list[LatencyRow],
                 raw_input_bytes: int, rtt_s: float = 0.0, paper_formula: bool = False,
                 devices: tuple[str, str] = ("edge", "cloud"), link: Link | None = None,
                 codec: Codec = BITPACK, sizes: SizeTable | None = None) -> None:
        self.points = points
        self.space = Space(points)
        self.raw_input_bytes = raw_input_bytes
        self.rtt_s = rtt_s
        self.paper_formula = paper_formula
        self.link = Link() if paper_formula or link is None else link
        self.devices = devices
        last = len(points)
        self.edge_all = self._single(edge_rows, last, "edge", devices[0])
        self.cloud_all = self._single(cloud_rows, -1, "cloud", devices[1])
        self.edge_raw = 0.0 if paper_formula else next(
            (r.median_s for r in edge_rows if r.point == -1 and r.side == "edge"), 0.0)
        s = self.space
        self.edge_s = np.empty(s.size)
        self.cloud_s = np.empty(s.size)
        for pt in points:
            sl = s.grid_slice(pt.index)
            self.edge_s[sl] = self._interp(edge_rows, pt, s.c[sl], "edge", devices[0])
            self.cloud_s[sl] = self._interp(cloud_rows, pt, s.c[sl], "cloud", devices[1])
        self.codec = codec
        if paper_formula:
            if not codec.exact or codec is not BITPACK:
                raise CoInferError(f"the paper's latency formula sends bit-packed codes; --codec {codec.name} needs "
                                   "a profile measured here")
            hw = np.array([points[p].elements_per_channel for p in s.p], dtype=np.float64)
            self.bytes = hw * s.c * s.b / 8
            self.bytes_p95 = self.bytes
        else:
            self.bytes, self.bytes_p95 = np.empty(s.size), np.empty(s.size)
            for pt in points:  # the codec's size: bitpack's formula, or a data-dependent codec's profile
                sl = s.grid_slice(pt.index)
                size = codec.size(pt, s.c[sl], s.b[sl], sizes)
                self.bytes[sl], self.bytes_p95[sl] = size.mean, size.p95
        self.wire = self.wire_bytes(self.bytes)

    def wire_bytes(self, payload: np.ndarray | float) -> np.ndarray | float:
        """Bytes a message of `payload` bytes puts on the link (payload + frame + transport headers)."""
        out = wire_bytes(self.link, np.asarray(payload, dtype=np.float64))
        return out if out.ndim else float(out)

    def transport_bytes(self, frame: np.ndarray | float) -> np.ndarray | float:
        """Bytes a whole frame of `frame` bytes puts on the link: plus the transport's headers per segment."""
        out = frame_on_wire(self.link, np.asarray(frame, dtype=np.float64))
        return out if out.ndim else float(out)

    @staticmethod
    def _single(rows: list[LatencyRow], point: int, side: str, name: str) -> float:
        for r in rows:
            if r.point == point and r.side == side:
                return r.median_s
        what = "whole model on the edge (all-edge)" if side == "edge" else "whole model in the cloud (all-cloud)"
        raise ProfileGap(f"latency profile of device '{name}' lacks the {what}", name, side)

    @staticmethod
    def _interp(rows: list[LatencyRow], pt: PartitionPoint, c: np.ndarray, side: str, name: str) -> np.ndarray:
        measured = sorted((r.channels, r.median_s) for r in rows if r.point == pt.index and r.side == side)
        if not measured:
            raise ProfileGap(f"latency profile of device '{name}' has no {side} rows at point {pt.index}", name, side)
        xs, ys = zip(*measured)
        return np.interp(c, xs, ys)  # constant beyond the measured range

    @classmethod
    def from_store(cls, store: Store, app: App, edge: str | None = None, cloud: str | None = None,
                   rtt_s: float | None = None, codec: str = "bitpack") -> LatencyModel:
        """The model of `app` from its stored profiles; `codec` names the codec whose bytes cross (a
        data-dependent one reads its sizes, `Store.codec_sizes`)."""
        from database.storage import app_flags
        edge, cloud = edge or app.edge_device, cloud or app.cloud_device

        def profile_it(name: str, side: str) -> str:  # the command that measures it (app, storage as given)
            flags = app_flags(app, store.storage)
            return f"profile it: python -m database.profile {flags} --device {name} --side {side}"

        profiled = store.profiled_devices(app.name)
        for name, side in ((edge, "edge"), (cloud, "cloud")):
            if side not in profiled.get(name, set()):
                known = ", ".join(f"{d} ({'+'.join(sorted(s))})" for d, s in sorted(profiled.items())) or "none"
                raise ProfileGap(f"no {side} latency profile of device '{name}' for app {app.name} "
                                 f"(profiled: {known}); {profile_it(name, side)}", name, side)
        edge_info, cloud_info = store.device(edge) or {}, store.device(cloud) or {}
        paper = edge_info.get("formula") == PAPER_FORMULA or cloud_info.get("formula") == PAPER_FORMULA
        chosen = get_codec(codec)
        sizes = None
        if not chosen.exact:
            sizes = SizeTable(chosen.name, store.codec_sizes(app.name, chosen.name))
            if not sizes:
                raise CoInferError(f"no {chosen.name} sizes for app {app.name}; measure them with python -m "
                                   f"database.codecprof --app {app.ref} --codec {chosen.name}")
        try:
            return cls(app_points(app), store.latency_rows(app.name, edge), store.latency_rows(app.name, cloud),
                       app.raw_input_bytes, app.rtt_s if rtt_s is None else rtt_s, paper, (edge, cloud), app.link,
                       chosen, sizes)
        except ProfileGap as gap:  # a partial profile: it lacks a whole model or a point's rows
            raise ProfileGap(f"{gap}; {profile_it(gap.device, gap.side)} --replace", gap.device, gap.side) from None

    # -- queries -------------------------------------------------------------------------
    def totals(self, mbps: float) -> np.ndarray:
        """L(s, B) for every scheme of the space (flat, Space order)."""
        return self.edge_s + self.wire / bytes_per_second(mbps) + self.rtt_s + self.cloud_s

    def breakdown(self, scheme: Scheme, mbps: float) -> Breakdown:
        bps = bytes_per_second(mbps)
        if scheme.is_all_edge:
            return Breakdown(self.edge_all, 0.0, 0.0, 0.0)
        if scheme.is_all_cloud:
            wire = self.wire_bytes(self.raw_input_bytes)
            return Breakdown(self.edge_raw, wire / bps + self.rtt_s, self.cloud_all, self.raw_input_bytes, wire)
        i = self.space.index(scheme)
        return Breakdown(float(self.edge_s[i]), float(self.wire[i] / bps + self.rtt_s), float(self.cloud_s[i]),
                         float(self.bytes[i]), float(self.wire[i]))

    def all_edge(self, mbps: float) -> float:
        return self.breakdown(Scheme.ALL_EDGE, mbps).total

    def all_cloud(self, mbps: float) -> float:
        return self.breakdown(Scheme.ALL_CLOUD, mbps).total

    def reference(self, mbps: float) -> float:
        """The best single-end latency, min(all-edge, all-cloud): the base of `-latency r`."""
        return min(self.all_edge(mbps), self.all_cloud(mbps))
