"""Repeated measurements of one scheme: replicates, their mean and spread, and the tolerance they suggest.

A scheme measured more than once (Opt-CoInfer's published search logs list a scheme the search visited
twice with two values; two imports of different logs of one protocol; a stored row and an import) has
*replicates*. All are stored (`database.store`, table `accuracy_replicate`); the accuracy table's value
of the scheme is their mean, and each scheme's count and standard deviation are read from them.

A replicate is one line of a log, identified by its text (the scheme and the value as written,
`2,2,8*0.190`) and its occurrence (how many times that text had come in its file, counting this line):
the k-th `2,2,8*0.190` of any file of the protocol is one measurement. So importing the same file again,
under any name, adds nothing; nor does a log copied into another (Opt-CoInfer's two published files share
their first 386 lines but two) or a log that grew (only its new lines are added); every other line is a
further replicate. What this cannot tell apart: two independent logs that wrote the very same value for
the same scheme the same number of times are taken as one copied line. An accuracy row stored before its
scheme had replicates (a build's fine-tune, an import before replicates) becomes one, `STORED_ROW`.

The tolerance of the monotone bounds (search/bounds.py) exists for this noise: two measurements of schemes
of equal true accuracy differ by a normal variable of standard deviation sigma * sqrt(2). With sigma the
pooled replicate standard deviation, `suggested_tolerance` = 2 * sqrt(2) * sigma covers that difference
95 % of the time (2 standard deviations of the difference).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

STORED_ROW = "stored-row"  # the source of a replicate taken from an accuracy row that predates replicates
MAX_KEY_TEXT = 96
SPREAD_COVERAGE = 2.0  # standard deviations of the difference of two measurements the tolerance covers


@dataclass(frozen=True)
class ReplicateStats:
    """A scheme's replicates: how many, their mean, and their sample standard deviation (None for one)."""

    n: int
    mean: float
    std: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> ReplicateStats:
        xs = [float(v) for v in values]
        if not xs:
            raise ValueError("no replicates")
        mean = math.fsum(xs) / len(xs)
        if len(xs) == 1:
            return cls(1, mean, None)
        return cls(len(xs), mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)))

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std}


def replicate_key(text: str) -> str:
    """The stored key of a measurement's text: the text itself, or for one over 96 characters (a CSV value
    written with many digits) its SHA-256."""
    if len(text) <= MAX_KEY_TEXT:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def pooled_std(stats: Iterable[ReplicateStats]) -> float | None:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the schemes measured more than once (None: none was)."""
    dof = ss = 0.0
    for s in stats:
        if s.n > 1 and s.std is not None:
            dof += s.n - 1
            ss += (s.n - 1) * s.std ** 2
    return math.sqrt(ss / dof) if dof else None


def suggested_tolerance(sigma: float) -> float:
    """The tolerance that covers the noise of two single measurements: 2 * sqrt(2) * sigma (module doc)."""
    return SPREAD_COVERAGE * math.sqrt(2.0) * sigma


def spread_summary(stats: dict) -> dict:
    """What the replicates of one table say, as JSON: measurements, schemes measured more than once, the pooled
    standard deviation and the tolerance it suggests (None without repeats)."""
    sigma = pooled_std(stats.values())
    repeated = {s: r for s, r in stats.items() if r.n > 1}
    return {"measurements": sum(r.n for r in stats.values()), "repeated": len(repeated),
            "max_replicates": max((r.n for r in stats.values()), default=0),
            "replicate_std": sigma, "suggested_tolerance": None if sigma is None else suggested_tolerance(sigma)}
