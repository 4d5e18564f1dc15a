"""A partition point: a place in a model where exactly one tensor crosses from the edge to the cloud.

For a chain model (VGG) the points are the conv blocks' outputs in order. A model with branches
(a residual network, a DAG traced with torch.fx) has a point wherever a single tensor carries
everything the rest of the graph needs; `node` names that tensor in the model's graph, so a
builder can cut there (head: everything up to `node`; tail: everything after, fed from it).
The search needs only what is here: the point's order, the crossing tensor's channels (what
pruning keeps c of) and spatial size (what each kept channel costs on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionPoint:
    index: int  # order from the input: layers up to and including this point run on the edge
    name: str  # human name, e.g. conv4_3+pool
    channels: int  # C_p of the crossing tensor
    height: int
    width: int
    node: str = ""  # the crossing tensor's node in the model's graph (empty for chain models)

    @property
    def elements_per_channel(self) -> int:
        return self.height * self.width
