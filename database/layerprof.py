"""Layer configurations and their latency on a device: the samples the latency predictor learns from.

A `Layer` is one operation of a model with what its cost depends on: its kind (conv, dwconv,
linear, pool, bn, act, add, plus the runtime's pack / unpack and `other` for flatten, top-k...),
input and output shapes, kernel, stride, groups, multiply-accumulates (FLOPs) and parameters.

- `model_layers(model, example)` traces any `nn.Module` with torch.fx and propagates shapes
  (`torch.fx.passes.shape_prop.ShapeProp`): every leaf module and every `add` / activation
  function of the graph becomes a Layer named after its node, in execution order.
- `sweep()` is the synthetic sweep: a few hundred configurations of each kind over the sizes a
  digits-scale CNN meets (1..2048 channels, 1..32 pixels, kernels 1..7, strides 1..2, depthwise).
- `time_layer(layer)` runs the layer alone (a fresh module with random weights, batch 1, random
  input) and returns the median thread CPU time of one call over `runs` samples, each sample the
  mean of back-to-back calls spanning at least `sample_s` (a sub-millisecond call is timed over
  many). Thread CPU time, not wall: preemption by other processes on a shared machine does not
  count, and it is what the `dilate` edge emulation charges (`devices.slowdown`): a device of
  speed s takes cpu / s.

What it ignores: cache state between consecutive layers of a model (each layer is timed hot),
memory-format conversions torch makes between layers, and weights' values (latency depends on
shapes only).
"""

from __future__ import annotations

import functools
import operator
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from apps import Device

KINDS = ("conv", "dwconv", "linear", "pool", "bn", "act", "add", "pack", "unpack", "other")
WHOLE = "model"  # the kind of a sample that is a whole model's forward, not one layer


@dataclass(frozen=True)
class Layer:
    """One operation and the shapes its latency depends on (batch dimension included)."""

    kind: str
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    flops: float = 0.0  # multiply-accumulates
    params: int = 0
    op: str = ""  # the module class or function, e.g. Conv2d, MaxPool2d, relu (how to rebuild it)

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, WHOLE):
            raise ValueError(f"unknown layer kind {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def in_elems(self) -> int:
        return _prod(self.in_shape)

    @property
    def out_elems(self) -> int:
        return _prod(self.out_shape)

    def features(self) -> list[float]:
        """What a per-kind regressor sees: sizes (log-scaled by the regressor) and the kernel's shape."""
        cin = self.in_shape[1] if len(self.in_shape) > 1 else 1
        cout = self.out_shape[1] if len(self.out_shape) > 1 else 1
        hw = self.in_shape[-1] if len(self.in_shape) == 4 else 1
        return [self.flops, self.in_elems, self.out_elems, self.params, cin, cout, hw,
                self.kernel, self.stride, self.groups]

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "kernel": self.kernel, "stride": self.stride,
                "groups": self.groups, "flops": self.flops, "params": self.params, "op": self.op}

    @classmethod
    def from_json(cls, data: dict) -> Layer:
        return cls(data["kind"], data["name"], tuple(data["in_shape"]), tuple(data["out_shape"]),
                   int(data["kernel"]), int(data["stride"]), int(data["groups"]), float(data["flops"]),
                   int(data["params"]), str(data.get("op", "")))


FEATURE_NAMES = ("flops", "in_elems", "out_elems", "params", "cin", "cout", "hw", "kernel", "stride", "groups")


@dataclass(frozen=True)
class LayerSample:
    """A layer timed on a device: `seconds` is the device's time for one call (CPU time / speed)."""

    device: str
    source: str  # "sweep" or the model whose layer it is (leave-one-model-out leaves these out)
    layer: Layer
    seconds: float


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _pair(v) -> int:
    return int(v[0]) if isinstance(v, tuple | list) else int(v)


# -- a model's layers ----------------------------------------------------------------------------
def _module_layer(name: str, mod: nn.Module, i: tuple[int, ...], o: tuple[int, ...]) -> Layer | None:
    from torch import nn
    op = type(mod).__name__
    params = sum(p.numel() for p in mod.parameters(recurse=False))
    if isinstance(mod, nn.Conv2d):
        k, s, g = _pair(mod.kernel_size), _pair(mod.stride), mod.groups
        flops = _prod(o) * (mod.in_channels // g) * k * _pair(mod.kernel_size[1:] or mod.kernel_size)
        kind = "dwconv" if g > 1 and g == mod.in_channels else "conv"
        return Layer(kind, name, i, o, k, s, g, float(flops), params, op)
    if isinstance(mod, nn.Linear):
        return Layer("linear", name, i, o, 1, 1, 1, float(_prod(o) * mod.in_features), params, op)
    if isinstance(mod, nn.MaxPool2d | nn.AvgPool2d):
        k, s = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
        return Layer("pool", name, i, o, k, s, 1, float(_prod(o) * k * k), 0, op)
    if isinstance(mod, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        k = max(1, i[-1] // max(1, o[-1]))
        return Layer("pool", name, i, o, k, k, 1, float(_prod(i)), 0, op)
    if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
        return Layer("bn", name, i, o, flops=float(_prod(i)), params=params, op=op)
    if isinstance(mod, nn.ReLU | nn.ReLU6 | nn.SiLU | nn.Hardswish | nn.Hardsigmoid | nn.Sigmoid | nn.GELU
                  | nn.LeakyReLU | nn.Tanh):
        return Layer("act", name, i, o, flops=float(_prod(i)), op=op)
    if isinstance(mod, nn.Dropout | nn.Identity):
        return None  # nothing in eval mode
    return Layer("other", name, i, o, flops=float(_prod(i)), params=params, op=op)


_ACT_FUNCTIONS = ("relu", "relu6", "silu", "hardswish", "sigmoid", "gelu", "tanh")


def _function_layer(name: str, target, i: tuple[int, ...], o: tuple[int, ...]) -> Layer:
    fname = getattr(target, "__name__", str(target))
    if target in (operator.add, operator.iadd) or fname in ("add", "add_", "iadd"):
        return Layer("add", name, i, o, flops=float(_prod(o)), op="add")
    if fname in _ACT_FUNCTIONS or fname.rstrip("_") in _ACT_FUNCTIONS:
        return Layer("act", name, i, o, flops=float(_prod(i)), op=fname.rstrip("_"))
    return Layer("other", name, i, o, flops=float(_prod(i)), op=fname)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def graph_of(model: nn.Module) -> nn.Module:
    """What to trace: a split model's own traced graph (`models.graph.GraphModel.net`, whose node names its
    partition points name), else the model itself."""
    import torch
    net = getattr(model, "net", None)
    return net if isinstance(net, torch.fx.GraphModule) else model


def traced(model: nn.Module, example: torch.Tensor):
    """The model's torch.fx GraphModule with every node's output shape (`tensor_meta`) for `example`."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp
    model = graph_of(model)
    gm = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    return gm


def graph_layers(gm) -> list[Layer]:
    """The Layers of a shape-propagated GraphModule (see `traced`), in execution order."""
    layers = []
    for node in gm.graph.nodes:
        out = _shape(node)
        if out is None or node.op not in ("call_module", "call_function", "call_method"):
            continue
        src = next((a for a in node.args if hasattr(a, "meta") and _shape(a) is not None), None)
        inp = _shape(src) if src is not None else out
        if node.op == "call_module":
            layer = _module_layer(node.name, gm.get_submodule(node.target), inp, out)
        elif node.op == "call_function":
            layer = _function_layer(node.name, node.target, inp, out)
        elif node.target in ("add", "add_", "relu", "relu_", "sigmoid"):
            layer = _function_layer(node.name, node.target, inp, out)
        elif node.target in ("view", "reshape", "flatten", "size", "contiguous", "dim"):
            layer = Layer("other", node.name, inp, out, flops=0.0, op=node.target)
        else:
            layer = Layer("other", node.name, inp, out, flops=float(_prod(inp)), op=node.target)
        if layer is not None:
            layers.append(layer)
    return layers


def model_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Every operation of `model` on an input like `example`, in execution order (see the module doc)."""
    return graph_layers(traced(graph_of(model).eval(), example))


def runtime_layers(cut: tuple[int, ...], name: str = "cut") -> tuple[Layer, Layer]:
    """The runtime's own work at a cut of this shape: the edge's quantise + pack and the cloud's unpack +
    dequantise (`compress.activation`, 8 bits, as the profiler times them)."""
    n = float(_prod(cut))
    return (Layer("pack", f"{name}.pack", cut, cut, flops=n, op="to_bytes"),
            Layer("unpack", f"{name}.unpack", cut, cut, flops=n, op="from_bytes"))


def topk_layer(logits: tuple[int, ...]) -> Layer:
    """The cloud's reply (softmax + top-5 of the logits), which both single ends also compute."""
    return Layer("other", "topk", logits, (logits[0], min(5, logits[-1])), flops=float(_prod(logits)), op="topk")


# -- the synthetic sweep -------------------------------------------------------------------------
CHANNELS = (1, 3, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 2048)
SIZES = (1, 2, 4, 8, 16, 32)
MAX_FLOPS = 3e8  # a configuration costing more is left out (a digits-scale model's layers stay below)


def _conv_layer(cin: int, cout: int, hw: int, k: int, s: int, g: int, name: str) -> Layer:
    pad = k // 2
    ho = (hw + 2 * pad - k) // s + 1
    out = (1, cout, ho, ho)
    kind = "dwconv" if g > 1 and g == cin else "conv"
    return Layer(kind, name, (1, cin, hw, hw), out, k, s, g, float(_prod(out) * (cin // g) * k * k),
                 cout * (cin // g) * k * k + cout, "Conv2d")


def sweep(n_per_kind: int = 60, seed: int = 0) -> list[Layer]:
    """Synthetic layer configurations: about `n_per_kind` of each kind (conv twice that), drawn at random
    (fixed seed) from the sizes a digits-scale CNN meets, FLOPs capped at MAX_FLOPS."""
    rng = random.Random(seed)
    out: list[Layer] = []

    def c() -> int:
        return rng.choice(CHANNELS)

    def hw() -> int:
        return rng.choice(SIZES)

    while sum(layer.kind == "conv" for layer in out) < 2 * n_per_kind:
        k, s = rng.choice((1, 1, 3, 3, 3, 5, 7)), rng.choice((1, 1, 1, 2))
        size = hw()
        if size < k // 2 + 1:
            continue
        layer = _conv_layer(c(), c(), size, k, s, 1, f"sweep.conv{len(out)}")
        if layer.flops <= MAX_FLOPS:
            out.append(layer)
    for i in range(n_per_kind):
        ch, size, k, s = c(), hw(), rng.choice((3, 3, 5)), rng.choice((1, 2))
        out.append(_conv_layer(ch, ch, max(size, k // 2 + 1), k, s, ch, f"sweep.dw{i}"))
        fin, fout = c(), rng.choice((*CHANNELS, 10, 4096))
        out.append(Layer("linear", f"sweep.fc{i}", (1, fin), (1, fout), flops=float(fin * fout),
                         params=fin * fout + fout, op="Linear"))
        ch, size = c(), max(2, hw())
        op, k = rng.choice((("MaxPool2d", 2), ("MaxPool2d", 3), ("AvgPool2d", 2), ("AdaptiveAvgPool2d", size)))
        s = k if op != "MaxPool2d" or k == 2 else 2
        ho = 1 if op == "AdaptiveAvgPool2d" else max(1, (size - k + (k // 2 if k == 3 else 0) * 2) // s + 1)
        out.append(Layer("pool", f"sweep.pool{i}", (1, ch, size, size), (1, ch, ho, ho), k, s, 1,
                         float(ch * ho * ho * k * k), 0, op))
        shape = (1, c(), hw(), hw())
        shape = (1, shape[1], shape[2], shape[2])
        n = float(_prod(shape))
        out.append(Layer("bn", f"sweep.bn{i}", shape, shape, flops=n, params=2 * shape[1], op="BatchNorm2d"))
        shape = (1, c(), *(2 * (hw(),)))
        out.append(Layer("act", f"sweep.act{i}", shape, shape, flops=float(_prod(shape)),
                         op=rng.choice(("ReLU", "ReLU", "ReLU6"))))
        shape = (1, c(), *(2 * (hw(),)))
        out.append(Layer("add", f"sweep.add{i}", shape, shape, flops=float(_prod(shape)), op="add"))
        shape = (1, c(), *(2 * (hw(),)))
        pack, unpack = runtime_layers(shape, f"sweep.cut{i}")
        out += [pack, unpack]
    for i, classes in enumerate((2, 10, 100, 1000)):
        out.append(Layer("other", f"sweep.topk{i}", (1, classes), (1, min(5, classes)), flops=float(classes),
                         op="topk"))
    return out


# -- timing --------------------------------------------------------------------------------------
_MODULES = {"ReLU": "ReLU", "ReLU6": "ReLU6", "SiLU": "SiLU", "Hardswish": "Hardswish", "Sigmoid": "Sigmoid",
            "GELU": "GELU", "Tanh": "Tanh", "Hardsigmoid": "Hardsigmoid", "LeakyReLU": "LeakyReLU"}


def callable_of(layer: Layer) -> Callable[[], object]:
    """A call that does the layer's work once (a fresh module with random weights, batch-1 random input)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    x = torch.randn(layer.in_shape)
    if layer.kind in ("conv", "dwconv"):
        cin, cout, k = layer.in_shape[1], layer.out_shape[1], layer.kernel
        mod = nn.Conv2d(cin, cout, k, layer.stride, k // 2, groups=layer.groups).eval()
        return lambda: mod(x)
    if layer.kind == "linear":
        mod = nn.Linear(layer.in_shape[-1], layer.out_shape[-1]).eval()
        return lambda: mod(x)
    if layer.kind == "pool":
        if layer.op.startswith("Adaptive"):
            mod = getattr(nn, layer.op)(layer.out_shape[-1])
        else:
            pad = layer.kernel // 2 if layer.kernel == 3 else 0
            mod = getattr(nn, layer.op if layer.op in ("MaxPool2d", "AvgPool2d") else "MaxPool2d")(
                layer.kernel, layer.stride, pad)
        return lambda: mod(x)
    if layer.kind == "bn":
        mod = (nn.BatchNorm2d if len(layer.in_shape) == 4 else nn.BatchNorm1d)(layer.in_shape[1]).eval()
        return lambda: mod(x)
    if layer.kind == "act":
        mod = getattr(nn, _MODULES.get(layer.op, "ReLU"), nn.ReLU)()
        return lambda: mod(x)
    if layer.kind == "add":
        y = torch.randn(layer.in_shape)
        return lambda: x + y
    if layer.kind in ("pack", "unpack"):
        from compress import activation
        cut = tuple(layer.in_shape) if len(layer.in_shape) == 4 else (1, layer.in_elems, 1, 1)
        a = torch.randn(cut)
        if layer.kind == "pack":
            return lambda: activation.to_bytes(a, 8)
        body = activation.to_bytes(a, 8)
        return lambda: activation.from_bytes(body, cut, 8)
    if layer.op == "topk":
        return lambda: torch.softmax(x, dim=1).topk(min(5, x.shape[1]), dim=1)
    if layer.op in ("flatten", "Flatten"):
        return lambda: torch.flatten(x, 1)
    if layer.op in ("view", "reshape", "size", "contiguous", "dim"):
        return lambda: x.reshape(x.shape)
    return lambda: F.relu(x)  # an unknown elementwise op: costed like an activation of its size


def time_call(fn: Callable[[], object], runs: int = 7, sample_s: float = 2e-3) -> float:
    """Median thread CPU seconds of one fn() call (see the module doc)."""
    import torch
    with torch.no_grad():
        for _ in range(2):
            fn()
        t0 = time.thread_time()
        fn()
        one = max(time.thread_time() - t0, 1e-6)
        k = max(1, min(2000, int(sample_s / one)))
        samples = []
        for _ in range(runs):
            t0 = time.thread_time()
            for _ in range(k):
                fn()
            samples.append((time.thread_time() - t0) / k)
    return statistics.median(samples)


@dataclass(frozen=True)
class SweepConfig:
    """How a device's layers are profiled (`database.predictor fit`): on `device` (a dilated one: CPU time / its
    speed; any other at this CPU's speed)."""

    device: Device
    runs: int = 7
    sample_s: float = 2e-3
    model_sample_s: float = 0.05  # a whole model's samples span at least this long
    n_per_kind: int = 60
    seed: int = 0
    progress: bool = True

    @property
    def speed(self) -> float:
        """The device's speed as a fraction of this CPU's when it is dilated, else 1 (this CPU)."""
        return self.device.speed if self.device.dilated else 1.0


@dataclass(frozen=True)
class NamedModel:
    """A model whose layers (and whole forward) join the samples, under its name."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # batch 1


def whole_layer(name: str, layers: list[Layer]) -> Layer:
    """The pseudo-layer a whole-model sample is stored as: the model's input, output and total FLOPs."""
    return Layer(WHOLE, name, layers[0].in_shape, layers[-1].out_shape, flops=sum(x.flops for x in layers),
                 params=sum(x.params for x in layers), op=str(len(layers)))


def _key(layer: Layer) -> tuple:
    return (layer.kind, layer.in_shape, layer.out_shape, layer.kernel, layer.stride, layer.groups, layer.op)


def profile_layers(config: SweepConfig, models: list[NamedModel] = ()) -> list[LayerSample]:
    """Time the sweep and every layer of every model, and each model's whole forward, on this CPU as the
    device. A model's layer samples keep its execution order (a configuration met twice is timed once);
    its whole forward is timed before and after its layers (the mean is stored: a shared machine drifts)."""
    import torch

    from cli.progress import progress
    layered = [(m, model_layers(m.module, torch.randn(m.input_shape))) for m in models]
    swept = sweep(config.n_per_kind, config.seed)
    bar = progress(total=len(swept) + sum(len(ls) + 2 for _, ls in layered), desc=f"layers on {config.device.name}",
                   enabled=config.progress)
    out, timed = [], {}

    def device_time(layer: Layer) -> float:
        key = _key(layer)
        if key not in timed:
            timed[key] = time_call(callable_of(layer), config.runs, config.sample_s) / config.speed
        bar.update()
        return timed[key]

    out += [LayerSample(config.device.name, "sweep", layer, device_time(layer)) for layer in swept]
    for m, layers in layered:
        forward = functools.partial(m.module.eval(), torch.randn(m.input_shape))
        whole = [time_call(forward, config.runs, config.model_sample_s) / config.speed]
        bar.update()
        out += [LayerSample(config.device.name, m.name, layer, device_time(layer)) for layer in layers]
        whole.append(time_call(forward, config.runs, config.model_sample_s) / config.speed)
        bar.update()
        out.append(LayerSample(config.device.name, m.name, whole_layer(m.name, layers), statistics.fmean(whole)))
    bar.close()
    return out
