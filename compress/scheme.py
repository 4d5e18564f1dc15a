"""The scheme: where the model is cut and what crosses the cut. One type, used by every layer.

A scheme is a split (p, c, b) — cut after partition point p, keep c of its C_p channels,
send b bits per activation — or one of the two single ends, all-cloud (the raw input is
sent, the cloud runs the whole model) and all-edge (the edge runs the whole model, nothing
is sent).

    text  "4,12,3"        "all-cloud"    "all-edge"
    JSON  {"p": 4, "c": 12, "b": 3}      "all-cloud"    "all-edge"
    wire  header p, c, bits = 4, 12, 3    -1, C_in, 8    (never sent)

Schemes are ordered by how much of the model runs on the edge: all-cloud < every split (by
p, then c, then b) < all-edge. Whether (p, c, b) exists in a model (p < number of points,
c <= C_p) is the space's business (`search.space.Space.check`); here 0 <= p, c >= 1 and
b in BITS (1..8) are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cli.errors import CoInferError

ALL_CLOUD_P = -1  # p of all-cloud, on the wire too
ALL_EDGE_P = 1 << 15  # p of all-edge: after every partition point; never on the wire
MIN_BITS, MAX_BITS = 1, 8  # bits per activation at the cut (the raw input goes at MAX_BITS)
BITS = range(MIN_BITS, MAX_BITS + 1)
ALL_CLOUD_TEXT, ALL_EDGE_TEXT = "all-cloud", "all-edge"


@dataclass(frozen=True, order=True)
class Scheme:
    p: int
    c: int = 0
    b: int = 0

    ALL_CLOUD: ClassVar[Scheme]
    ALL_EDGE: ClassVar[Scheme]

    def __post_init__(self) -> None:
        if self.p in (ALL_CLOUD_P, ALL_EDGE_P):
            if (self.c, self.b) != (0, 0):
                raise CoInferError(f"a single-end scheme has no channels or bits, got {self.p},{self.c},{self.b}")
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.p, self.c, self.b)):
            raise CoInferError(f"scheme fields must be integers, got {self.p!r},{self.c!r},{self.b!r}")
        if self.p < 0:
            raise CoInferError(f"partition point {self.p} < 0")
        if self.c < 1:
            raise CoInferError(f"channels {self.c} < 1")
        if self.b not in BITS:
            raise CoInferError(f"bits {self.b} outside {MIN_BITS}..{MAX_BITS}")

    # -- what it is ------------------------------------------------------------------------
    @property
    def is_split(self) -> bool:
        return self.p not in (ALL_CLOUD_P, ALL_EDGE_P)

    @property
    def is_all_cloud(self) -> bool:
        return self.p == ALL_CLOUD_P

    @property
    def is_all_edge(self) -> bool:
        return self.p == ALL_EDGE_P

    def __iter__(self):
        """`p, c, b = scheme` for a split."""
        if not self.is_split:
            raise CoInferError(f"{self} has no (p, c, b)")
        return iter((self.p, self.c, self.b))

    # -- text ------------------------------------------------------------------------------
    def __str__(self) -> str:
        if self.is_all_cloud:
            return ALL_CLOUD_TEXT
        if self.is_all_edge:
            return ALL_EDGE_TEXT
        return f"{self.p},{self.c},{self.b}"

    @classmethod
    def parse(cls, text: str) -> Scheme:
        """'p,c,b' (or 'p-c-b'), 'all-cloud' or 'all-edge'."""
        text = text.strip()
        if text == ALL_CLOUD_TEXT:
            return cls.ALL_CLOUD
        if text == ALL_EDGE_TEXT:
            return cls.ALL_EDGE
        parts = text.replace("-", ",").split(",")
        try:
            p, c, b = (int(x) for x in parts)
        except ValueError:
            raise CoInferError(f"bad scheme {text!r}: expected p,c,b (three integers), all-cloud or all-edge") \
                from None
        return cls(p, c, b)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, int] | str:
        return {"p": self.p, "c": self.c, "b": self.b} if self.is_split else str(self)

    @classmethod
    def from_json(cls, value: Any) -> Scheme:
        if isinstance(value, str) and value in (ALL_CLOUD_TEXT, ALL_EDGE_TEXT):
            return cls.parse(value)
        if isinstance(value, dict) and set(value) == {"p", "c", "b"}:
            return cls(value["p"], value["c"], value["b"])
        raise CoInferError(f"bad scheme {value!r}: expected {{\"p\": P, \"c\": C, \"b\": B}}, "
                           f"\"{ALL_CLOUD_TEXT}\" or \"{ALL_EDGE_TEXT}\"")

    # -- wire (runtime.protocol's header fields p, c, bits) --------------------------------
    def wire(self, in_channels: int) -> tuple[int, int, int]:
        """(p, c, bits) of a REQUEST: all-cloud sends the input's channels at 8 bits."""
        if self.is_all_edge:
            raise CoInferError("all-edge sends nothing to the cloud")
        return (ALL_CLOUD_P, in_channels, MAX_BITS) if self.is_all_cloud else (self.p, self.c, self.b)

    @classmethod
    def from_wire(cls, p: int, c: int, bits: int) -> Scheme:
        return cls.ALL_CLOUD if p == ALL_CLOUD_P else cls(p, c, bits)


Scheme.ALL_CLOUD = Scheme(ALL_CLOUD_P)
Scheme.ALL_EDGE = Scheme(ALL_EDGE_P)
ALL_CLOUD = Scheme.ALL_CLOUD
ALL_EDGE = Scheme.ALL_EDGE


def all_schemes(widths: list[int]) -> list[Scheme]:
    """Every split scheme (p, c, b): p over the points, c in 1..C_p, b in BITS."""
    return [Scheme(p, c, b) for p, cp in enumerate(widths) for c in range(1, cp + 1) for b in BITS]
