"""The per-layer report (Neurosurgeon's view of a model): each place to cut, what it computes, what crosses, and
what each side takes.

    report = layer_report(store, app, edge="cpu-edge", cloud="cpu-cloud")
    print("\\n".join(report.lines()))        # or report.to_json()

Rows, in order: `input` (p = -1, all-cloud: the raw image crosses), each partition point p = 0..P-1
(`models.build.app_points`), `output` (p = P, all-edge: only the answer stays). Per row:
- kind: the operations from the previous cut to this one, by `database.layerprof`'s kinds in order
  with repeats merged (conv+bn+act+pool), from the model traced with torch.fx;
- shape: the (C, H, W) tensor that crosses (the logits at `output`), its bytes as float32 (what
  Neurosurgeon reports as a layer's output size) and on the wire at 8 bits, every channel kept
  (`compress.activation.payload_bytes`, the frame's own header not counted; 0 at `output`: nothing
  crosses);
- edge_s: the edge's time to run the model up to the cut and pack it (all channels); cloud_s: the
  cloud's time to unpack it, run the rest and reply; at `input` the edge only packs the image and
  the cloud runs everything; at `output` the edge runs everything and the cloud nothing (None).
Both are the `layer_latency` rows (p, C_p) of the device's side, as the searches use them.

Where each side's times come from (`SideSource.how`):
- `profile`: the device's stored profile of the app, with where it was measured
  (`database.provenance.ProfileUse`: by database.profile, imported, or the device row's; "not this
  machine" when it was emulated on another CPU);
- `predicted profile`: stored rows marked predicted (`python -m database.predictor predict`);
- `predictor`: no rows, but the device has layer samples: predicted now (`database.predictor`,
  full channels only), nothing stored;
- `none`: neither; the line says how to get either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from apps import App

PROFILE, PREDICTED, PREDICTOR, NONE = "profile", "predicted profile", "predictor", "none"
SOURCES = {"measured": "database.profile", "imported": "imported with database.profile_io",
           "device": "the device row: a profile older than provenance"}


@dataclass(frozen=True)
class LayerRow:
    point: int  # -1 input, 0..P-1 partition points, P output
    name: str
    kind: str
    shape: tuple[int, ...]
    bytes: int  # float32
    wire_bytes: int  # 8 bits, every channel
    edge_s: float | None
    cloud_s: float | None


@dataclass(frozen=True)
class SideSource:
    """Where one side's times come from (see the module doc); `use` is the stored profile's provenance."""

    side: str
    device: str
    how: str
    use: object | None = None  # database.provenance.ProfileUse of a stored profile
    note: str = ""

    def describe(self) -> str:
        """'edge (cpu-edge): profile, measured on AMD EPYC, 2 CPUs, slowed to 0.125, 2026-11-23T19:15:48 (device
        row)', or the note."""
        if self.how == NONE:
            return f"{self.side} ({self.device}): {self.note}"
        text = f"{self.side} ({self.device}): {self.how}"
        if self.use is not None:
            fp = self.use.fingerprint
            slowed = {"dilate": "slowed to", "quota": "CPU quota"}.get(fp.get("emulation") or "dilate")
            speed = f", {slowed} {fp['speed']:g}" if fp.get("speed") is not None else ""
            when = f", {self.use.measured_at}" if self.use.measured_at else ""
            text += f", measured on {self.use.machine}{speed}{when} ({SOURCES.get(self.use.source, self.use.source)})"
            if self.use.foreign:
                text += ", not this machine"
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict:
        return {"side": self.side, "device": self.device, "how": self.how, "note": self.note,
                "provenance": self.use.to_json() if self.use is not None else None}


@dataclass(frozen=True)
class LayerReport:
    app: str
    sides: tuple[SideSource, SideSource]
    rows: tuple[LayerRow, ...]

    def to_json(self) -> dict:
        return {"app": self.app, "sides": {s.side: s.to_json() for s in self.sides},
                "layers": [asdict(r) | {"shape": list(r.shape)} for r in self.rows]}

    def lines(self) -> list[str]:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1e3:.3f}"
        out = [f"app {self.app}: {len(self.rows) - 2} partition points", *(f"  {s.describe()}" for s in self.sides)]
        table = [("p", "name", "kind", "output", "bytes", "8-bit wire", "edge ms", "cloud ms")]
        table += [(str(r.point), r.name, r.kind, "x".join(map(str, r.shape)), str(r.bytes), str(r.wire_bytes),
                   ms(r.edge_s), ms(r.cloud_s)) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            out.append("  " + "  ".join(cell.rjust(w) if i in (0, 4, 5, 6, 7) else cell.ljust(w)
                                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        return out


def _kinds(layers) -> str:
    kinds: list[str] = []
    for layer in layers:
        if not kinds or kinds[-1] != layer.kind:
            kinds.append(layer.kind)
    return "+".join(kinds) or "-"


def block_kinds(app: App) -> list[str]:
    """The operations between consecutive cuts: one entry per partition point, then the rest up to the output."""
    import torch

    from database.layerprof import graph_layers, traced
    from database.predictor import app_example_shape, point_positions
    from models.build import app_points, build_model
    gm = traced(build_model(app).eval(), torch.zeros(app_example_shape(app)))
    layers = graph_layers(gm)
    ends = [*point_positions(gm, layers, app_points(app)), len(layers)]
    return [_kinds(layers[a:b]) for a, b in zip([0, *ends[:-1]], ends)]


def _times(store, app: App, device: str, side: str, profiled: dict, predicted: dict) -> tuple[SideSource, dict]:
    """(where the side's times come from, {(point, channels): seconds})."""
    from database.provenance import profile_uses
    if side in profiled.get(device, set()):
        use = profile_uses(store, app, [(device, side)])
        rows = {(r.point, r.channels): r.median_s for r in store.latency_rows(app.name, device) if r.side == side}
        how = PREDICTED if side in predicted.get(device, set()) else PROFILE
        return SideSource(side, device, how, use[0] if use else None), rows
    samples = store.layer_samples(device)
    if samples:
        from database.predictor import LatencyPredictor, predicted_rows
        predictor = LatencyPredictor.fit(samples)
        rows = {(r.point, r.channels): r.median_s for r in predicted_rows(app, device, (side,), predictor, True)}
        return SideSource(side, device, PREDICTOR, note=f"from {len(samples)} layer samples, not stored"), rows
    known = ", ".join(f"{d} ({'+'.join(sorted(s))})" for d, s in sorted(profiled.items())) or "none"
    return SideSource(side, device, NONE, note=(
        f"no {side} profile of {device} for {app.name} (profiled: {known}) and no layer samples to predict from: "
        f"python -m database.profile --app {app.name} --device {device} --side {side}, or python -m "
        f"database.predictor fit --device {device}")), {}


def layer_report(store, app: App, edge: str | None = None, cloud: str | None = None) -> LayerReport:
    """Every cut of `app` with its times on `edge` and `cloud` (default: the app's devices); see the module doc."""
    from compress.activation import payload_bytes
    from models.build import app_points
    edge, cloud = edge or app.edge_device, cloud or app.cloud_device
    profiled, predicted = store.profiled_devices(app.name), store.predicted(app.name)
    (e_src, e), (c_src, c) = (_times(store, app, edge, "edge", profiled, predicted),
                              _times(store, app, cloud, "cloud", profiled, predicted))
    points = app_points(app)
    kinds = block_kinds(app)
    image = (app.in_channels, app.input_size, app.input_size)
    rows = [LayerRow(-1, "input", "-", image, 4 * app.in_channels * app.input_size ** 2,
                     int(payload_bytes(app.input_size ** 2, app.in_channels, 8)), e.get((-1, app.in_channels)),
                     c.get((-1, app.in_channels)))]
    for pt, kind in zip(points, kinds):
        hw = pt.height * pt.width
        rows.append(LayerRow(pt.index, pt.name, kind, (pt.channels, pt.height, pt.width), 4 * pt.channels * hw,
                             int(payload_bytes(hw, pt.channels, 8)), e.get((pt.index, pt.channels)),
                             c.get((pt.index, pt.channels))))
    n = app.num_classes
    rows.append(LayerRow(len(points), "output", kinds[-1], (n,), 4 * n, 0, e.get((len(points), n)), None))
    return LayerReport(app.name, (e_src, c_src), tuple(rows))
