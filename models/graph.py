"""DAG partitioning with torch.fx: any traceable classification model as a `models.splittable.Splittable`.

`GraphModel(module, in_channels, input_size, num_classes)` traces `module` once (`torch.fx.symbolic_trace`)
and runs one example input through it (`ShapeProp`) to learn every tensor's shape. Nodes are in
topological order; cutting right after node i, the tensors that *cross* are the nodes at or before i
that depend on the input and are read by a node after i. A partition point is a node after which
exactly one tensor crosses: the head is the graph up to that node, the tail the rest fed from it
(parameters and constants are not tensors that cross: the tail has its own).

Which such nodes are points (`find_points`), unless the app names them (`model.points`):
1. its output is 4-D (N, C, H, W): channels to prune and quantise per channel;
2. exactly one tensor crosses after it (a ResNet block's output, not a node inside the block, whose
   shortcut still carries the block's input);
3. it ends a block: the next node belongs to another module of depth <= 2 (`layer1.0`, `features.3`,
   a top-level leaf such as `maxpool`) or it is a function outside any module;
4. not every reader is a BatchNorm, an activation, a pool, an identity or a dropout: as for VGG the
   cut moves past those (pooled when a pool follows), which send no more than the node itself.
So a ResNet's points are the stem (after its max-pool), every BasicBlock/Bottleneck output and the
global-pooled features; a MobileNetV2's the stem, every inverted-residual output and the pooled
features. A user-given node that fails rule 1 or 2 is an error naming the tensors that cross.

Pruning at point p (`keep_channels`): the crossing tensor keeps the c channels chosen by the caller
(`compress.prune`: L1 norm of the filters of `producer_weight(p)`, the conv nearest to the point
inside its block, through the first argument of a residual add first, i.e. the residual branch's
last conv, not the shortcut's). The head sends only those c channels; before the tail they are
scattered back into a zero tensor of C_p channels (`index_copy`). A zero channel contributes
nothing to a conv and adds nothing to a residual sum, so this equals pruning the matching input
channels of *every* consumer of the crossing tensor, the conv branch and the identity shortcut of
the next block alike, while the tail's modules (and the state_dict) keep their shapes. The edge
still computes all C_p channels of the point; only c cross the link.
"""

from __future__ import annotations

import copy
from collections import deque

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from cli.errors import CoInferError, first_line
from models.points import PartitionPoint

ABSORBING_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.Hardswish,
                     nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d,
                     nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout)
ABSORBING_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardswish, F.silu, F.gelu, F.adaptive_avg_pool2d,
                       F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d, F.dropout}


def trace(module: nn.Module) -> fx.GraphModule:
    """`module` as a torch.fx graph; a model that cannot be traced is one CoInferError line."""
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = first_line(exc)
        raise CoInferError(f"cannot trace {type(module).__name__} with torch.fx: {first}") from None


def _scope(gm: fx.GraphModule, node: fx.Node) -> str:
    """The module of depth <= 2 a node runs in (`layer1.0`), or the node's own name outside modules."""
    if node.op == "call_module":
        path = str(node.target)
    else:
        stack = node.meta.get("nn_module_stack") or {}
        path = str(next(reversed(stack))).split("@")[0] if stack else ""
    return ".".join(path.split(".")[:2]) if path else f"@{node.name}"


class _Graph:
    """Topological facts of a traced graph: input dependence, crossing tensors, shapes."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.by_name = {n.name: n for n in self.nodes}
        live: set[fx.Node] = set()
        for n in self.nodes:
            if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
                live.add(n)
        self.live = live
        self.last_use = {n: max((self.order[u] for u in n.users), default=-1) for n in self.nodes}

    def crossing(self, node: fx.Node) -> list[fx.Node]:
        i = self.order[node]
        return [n for n in self.nodes[: i + 1] if n in self.live and self.last_use[n] > i]

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def absorbed(self, node: fx.Node) -> bool:
        """Every reader is a BatchNorm, activation, pool, identity or dropout (rule 4)."""
        def absorbing(u: fx.Node) -> bool:
            if u.op == "call_module":
                return isinstance(self.gm.get_submodule(str(u.target)), ABSORBING_MODULES)
            return u.op == "call_function" and u.target in ABSORBING_FUNCTIONS
        return bool(node.users) and all(absorbing(u) for u in node.users)


def find_points(g: _Graph) -> list[fx.Node]:
    """The automatic partition points (the module doc's rules 1-4), in topological order."""
    out = []
    for i, n in enumerate(g.nodes[:-1]):
        shape = g.shape(n)
        if n.op not in ("call_module", "call_function", "call_method") or shape is None or len(shape) != 4:
            continue
        if g.crossing(n) != [n] or g.absorbed(n):
            continue
        nxt = g.nodes[i + 1]
        if _scope(g.gm, n).startswith("@") or _scope(g.gm, n) != _scope(g.gm, nxt):
            out.append(n)
    return out


def check_point(g: _Graph, name: str, model: str) -> fx.Node:
    """A user-given node name as a partition point, or one CoInferError line saying why not."""
    node = g.by_name.get(name)
    if node is None or node.op in ("placeholder", "output", "get_attr"):
        known = ", ".join(n.name for n in g.nodes if n.op == "call_module")[:120]
        raise CoInferError(f"{model} has no node '{name}' to cut after (nodes: {known}, ...)")
    shape = g.shape(node)
    if shape is None or len(shape) != 4:
        raise CoInferError(f"node '{name}' of {model} is not a partition point: its output is not an "
                           f"(N, C, H, W) tensor (shape {shape})")
    crossing = g.crossing(node)
    if crossing != [node]:
        names = ", ".join(n.name for n in crossing)
        raise CoInferError(f"node '{name}' of {model} is not a partition point: {len(crossing)} tensors "
                           f"cross after it ({names}); cut where exactly one does")
    return node


class GraphModel(nn.Module):
    """A traced model split at its partition points (see the module doc). State_dict keys are the
    traced module's under `net.` (the torchvision model's own names)."""

    def __init__(self, module: nn.Module, in_channels: int, input_size: int, num_classes: int,
                 nodes: list[str] | None = None, name: str | None = None) -> None:
        super().__init__()
        self.in_channels, self.input_size, self.num_classes = in_channels, input_size, num_classes
        self.arch = name or type(module).__name__
        self.net = module if isinstance(module, fx.GraphModule) else trace(module)
        g = _Graph(self.net)
        if not any(n.meta.get("tensor_meta") is not None for n in g.nodes):
            self._propagate_shapes()
        self._g = g
        points = [check_point(g, n, self.arch) for n in nodes] if nodes is not None else find_points(g)
        if nodes is not None and len(set(nodes)) != len(nodes):
            raise CoInferError(f"model.points of {self.arch} names a node twice")
        points.sort(key=g.order.__getitem__)
        if not points:
            raise CoInferError(f"{self.arch} has no partition point (no node after which one (N, C, H, W) "
                               f"tensor crosses)")
        self._nodes = points
        self._points = [self._point(i, n) for i, n in enumerate(points)]
        self._keep: dict[int, torch.Tensor] = {}
        self._parts: dict[int, tuple[fx.GraphModule, fx.GraphModule]] = {}

    def _propagate_shapes(self) -> None:
        x = torch.zeros(1, self.in_channels, self.input_size, self.input_size)
        was = self.net.training
        try:
            with torch.no_grad():
                ShapeProp(self.net.eval()).propagate(x)
        except Exception as exc:
            first = first_line(exc)
            raise CoInferError(f"{self.arch} does not run on (1, {self.in_channels}, {self.input_size}, "
                               f"{self.input_size}) inputs: {first}") from None
        finally:
            self.net.train(was)

    def _point(self, index: int, node: fx.Node) -> PartitionPoint:
        _, channels, height, width = self._g.shape(node)
        scope = _scope(self.net, node)
        return PartitionPoint(index, scope.lstrip("@"), channels, height, width, node.name)

    # -- Splittable ---------------------------------------------------------------------------
    def partition_points(self) -> list[PartitionPoint]:
        return [pt if pt.index not in self._keep else
                PartitionPoint(pt.index, pt.name, len(self._keep[pt.index]), pt.height, pt.width, pt.node)
                for pt in self._points]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tail(x, -1)

    def forward_head(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """Edge side: the graph up to point p; only the kept channels when p was pruned."""
        a = self._part(p)[0](x)
        keep = self._keep.get(p)
        return a if keep is None else a.index_select(1, keep.to(a.device))

    def forward_tail(self, a: torch.Tensor, p: int) -> torch.Tensor:
        """Cloud side: the graph after point p (p = -1: the whole model). A pruned point's c channels
        are scattered back into zeros of C_p channels first (see the module doc)."""
        if p == -1:
            return self.net(a)
        keep = self._keep.get(p)
        if keep is not None:
            full = a.new_zeros(a.shape[0], self._points[p].channels, *a.shape[2:])
            a = full.index_copy(1, keep.to(a.device), a)
        return self._part(p)[1](a)

    def producer_weight(self, p: int) -> torch.Tensor:
        """The weight of the conv that produces point p (the module doc: nearest inside its block, the
        residual branch before the shortcut; a pool's point takes the previous point's conv)."""
        g, node = self._g, self._nodes[p]
        stop = g.order[self._nodes[p - 1]] if p > 0 else -1
        channels = self._points[p].channels
        seen, queue = {node}, deque([node])
        while queue:
            n = queue.popleft()
            if n.op == "call_module":
                mod = self.net.get_submodule(str(n.target))
                if isinstance(mod, nn.Conv2d) and mod.out_channels == channels:
                    return mod.weight
            for a in n.all_input_nodes:
                if a not in seen and g.order[a] > stop:
                    seen.add(a)
                    queue.append(a)
        if p > 0 and self._points[p - 1].channels == channels:
            return self.producer_weight(p - 1)
        raise CoInferError(f"{self.arch}: no conv of {channels} filters produces point {p} "
                           f"({self._points[p].node}) to rank its channels")

    def keep_channels(self, p: int, keep: torch.Tensor) -> GraphModel:
        """A copy (own weights) whose point p carries only channels `keep` (ascending) of C_p."""
        clone = GraphModel(copy.deepcopy(self.net), self.in_channels, self.input_size, self.num_classes,
                           [n.name for n in self._nodes], self.arch)
        clone._keep = {**self._keep, p: keep.clone()}
        return clone

    # -- head and tail graphs --------------------------------------------------------------------
    def _part(self, p: int) -> tuple[fx.GraphModule, fx.GraphModule]:
        """(head, tail) GraphModules of point p, built on first use; they share this model's modules."""
        if p not in self._parts:
            g, cut = self._g, self._nodes[p]
            i = g.order[cut]
            head, env = fx.Graph(), {}
            for n in g.nodes[: i + 1]:
                env[n] = head.node_copy(n, env.__getitem__)
            head.output(env[cut])
            tail = fx.Graph()
            env = {cut: tail.placeholder("a")}
            for n in g.nodes[: i + 1]:  # parameters and constants the tail reads (not crossing tensors)
                if n not in g.live and g.last_use[n] > i:
                    env[n] = tail.node_copy(n, env.__getitem__)
            for n in g.nodes[i + 1:]:
                env[n] = tail.node_copy(n, env.__getitem__)
            self._parts[p] = (fx.GraphModule(self.net, head), fx.GraphModule(self.net, tail))
        return self._parts[p]
