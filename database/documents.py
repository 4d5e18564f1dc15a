"""The files the database imports, as pydantic models: each file is validated whole before anything is written.

- `ProfileDocument`: a latency profile file (`database.profile_io`, format `coinfer-latency-profile/1`):
  the app, the device, its fingerprint and notes, each side's provenance, the activation shapes and the
  rows. Every integer is bounded, every latency finite and non-negative, names are safe identifiers, and
  two rows of one (side, point, channels) must agree (an exact repeat is kept once, `distinct_rows`).
  `check_app(points, in_channels, num_classes)` then checks it against the app's model: each row's point
  exists on its side (edge: -1 all-cloud's upload .. P all-edge; cloud: -1 the whole model .. P-1), the
  channels of a split point are 1..C_p and of an end the input's or the classes' (0: the paper's
  formula), and the shapes, when given (an export of a database without them has []), are the model's.
- `TableRow`: one scheme of an accuracy table (`database.formats`: Opt-CoInfer text or CSV): p, c, b and
  top-1 as a fraction.

Types are strict for JSON (no string read as a number, no bool as an int); a table's text fields are
parsed (`TableRow.model_validate(..., strict=False)`). `one_line(where, exc)` is the first problem as
one CoInferError line naming the field (`rows.3.median_s: must be greater than or equal to 0, got -1.0`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from apps.schema import NAME_PATTERN, describe_error
from cli.errors import CoInferError
from compress.scheme import MAX_BITS, MIN_BITS

PROFILE_FORMAT = "coinfer-latency-profile/1"
MAX_POINTS = 4096  # partition points of a model (the zoo's largest has 19)
MAX_CHANNELS = 1 << 20  # channels at a cut, or an input's or classes' count
MAX_ROWS = 1_000_000  # a profile's rows (13 points x 5 channel counts x 2 sides is 130)
MAX_RUNS = 10**9
MAX_SECONDS = 1e6  # a latency of one inference, or of one split stage: 11 days would be a unit mistake
MAX_TEXT = 1 << 16

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Side = Literal["edge", "cloud"]


class _Doc(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ProfileRow(_Doc):
    """One measured stage: `side`, partition `point`, `channels` kept at the cut, median and p90 seconds, runs."""

    side: Side
    point: Annotated[int, Field(ge=-1, le=MAX_POINTS)]
    channels: Annotated[int, Field(ge=0, le=MAX_CHANNELS)]
    median_s: Seconds
    p90_s: Seconds | None
    n: Annotated[int, Field(ge=0, le=MAX_RUNS)]

    @property
    def key(self) -> tuple[str, int, int]:
        return self.side, self.point, self.channels


class SideProvenance(_Doc):
    """Where one side was measured: the machine's fingerprint, the source it had, and when (ISO time)."""

    fingerprint: dict[str, Any]
    source: Annotated[str, Field(max_length=64)] | None = None
    measured_at: Annotated[str, Field(max_length=64)] | None = None

    @field_validator("measured_at")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"measured_at must be an ISO time, got {value[:40]!r}") from None
        return value

    @property
    def when(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.measured_at) if self.measured_at else None


Shape = Annotated[tuple[Annotated[int, Field(ge=0, lt=MAX_POINTS)], Annotated[str, Field(min_length=1, max_length=64)],
                        Annotated[int, Field(ge=1, le=MAX_CHANNELS)], Annotated[int, Field(ge=1, le=1 << 16)],
                        Annotated[int, Field(ge=1, le=1 << 16)]],
                  BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]  # JSON has no tuples


class ProfileDocument(_Doc):
    """A latency profile file (see the module doc)."""

    format: Literal["coinfer-latency-profile/1"]
    app: Name
    device: Name
    fingerprint: dict[str, Any]
    notes: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    provenance: dict[Side, SideProvenance] = {}
    shapes: Annotated[list[Shape], Field(max_length=MAX_POINTS)] | None = None
    rows: Annotated[list[ProfileRow], Field(min_length=1, max_length=MAX_ROWS)]

    @model_validator(mode="after")
    def _no_conflicts(self) -> ProfileDocument:
        seen: dict[tuple[str, int, int], tuple[int, ProfileRow]] = {}
        for i, row in enumerate(self.rows):
            first = seen.setdefault(row.key, (i, row))
            if first[1] != row:
                raise ValueError(f"rows {first[0]} and {i} are both {row.side} point {row.point} with "
                                 f"{row.channels} channels but differ (median {first[1].median_s:.6g} s vs "
                                 f"{row.median_s:.6g} s)")
        if self.shapes is not None and len({s[0] for s in self.shapes}) != len(self.shapes):
            raise ValueError("shapes name a point twice")
        return self

    @property
    def distinct_rows(self) -> list[ProfileRow]:
        """The rows, an exact repeat kept once (in file order)."""
        return list({row.key: row for row in reversed(self.rows)}.values())[::-1]

    @property
    def sides(self) -> list[str]:
        return sorted({r.side for r in self.rows})

    def check_app(self, shapes: list[tuple[int, str, int, int, int]], in_channels: int, num_classes: int,
                  where: str) -> None:
        """CoInferError (one line) unless every row and shape fits the app's model, whose partition points are
        `shapes` (index, name, channels, height, width), in order (see the module doc)."""
        last = len(shapes)
        for i, row in enumerate(self.rows):
            top = last if row.side == "edge" else last - 1
            if not -1 <= row.point <= top:
                raise CoInferError(f"{where}: rows.{i}: {row.side} point {row.point} is not one of app {self.app}'s "
                                   f"(-1..{top})")
            if row.point == -1 or row.point == last:
                end = in_channels if row.point == -1 else num_classes
                if row.channels not in (0, end):
                    raise CoInferError(f"{where}: rows.{i}: {row.side} point {row.point} carries {end} channels "
                                       f"(or 0), got {row.channels}")
            elif not 1 <= row.channels <= shapes[row.point][2]:
                raise CoInferError(f"{where}: rows.{i}: point {row.point} has 1..{shapes[row.point][2]} channels, "
                                   f"got {row.channels}")
        if self.shapes and [tuple(s) for s in self.shapes] != [tuple(s) for s in shapes]:  # [] or none: not given
            differ = [list(a) for a, b in zip(self.shapes, shapes, strict=False) if tuple(a) != tuple(b)]
            raise CoInferError(f"{where}: shapes are not app {self.app}'s partition points ({len(self.shapes)} "
                               f"given, {last} in the model; the first differing: {differ[0] if differ else None})")


class TableRow(_Doc):
    """One scheme of an accuracy table: partition point, channels kept, bits, top-1 as a fraction."""

    p: Annotated[int, Field(ge=0, lt=MAX_POINTS)]
    c: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    b: Annotated[int, Field(ge=MIN_BITS, le=MAX_BITS)]
    top1: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def one_line(where: str, exc: ValidationError) -> CoInferError:
    """The first problem of a validation as one CoInferError line naming `where` and the field."""
    errors = exc.errors(include_url=False)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CoInferError(f"{where}: {describe_error(errors[0])}{more}".replace("\n", " "))


def parse_profile(data: Any, where: str) -> ProfileDocument:
    """A profile file's JSON as a `ProfileDocument`; the first problem is one CoInferError line."""
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise CoInferError(f"{where} is not a latency profile ({PROFILE_FORMAT}); write one with export-profile")
    try:
        return ProfileDocument.model_validate(data)
    except ValidationError as exc:
        raise one_line(f"profile {where}", exc) from None
