"""Searches over the scheme space: queries, latency model, monotone bounds, Optuna samplers.

    from search import CoInferSampler, LatencyQuery, Problem, Objective, certify

Names are imported on first use, so `import search` stays light (CLIs' --help).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LatencyQuery": "search.query", "AccuracyQuery": "search.query", "Query": "search.query",
    "Problem": "search.problem", "Status": "search.problem",
    "Knowledge": "search.bounds", "LatencyModel": "search.latency", "Space": "search.space",
    "Certificate": "search.certificate", "certify": "search.certificate",
    "Evaluator": "search.evaluators", "DatabaseEvaluator": "search.evaluators", "TableEvaluator": "search.evaluators",
    "Objective": "search.study", "open_study": "search.study", "knowledge": "search.study",
    "CoInferSampler": "search.samplers.coinfer", "OptCoInferSampler": "search.samplers.optcoinfer",
    "ExhaustiveSampler": "search.samplers.exhaustive",
    "SearchResult": "search.runner", "run_search": "search.runner", "SearchConfig": "search.runner",
    "SAMPLERS": "search.samplers", "sampler_spec": "search.samplers",
    "QueryRequest": "search.answer", "prepare": "search.answer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
