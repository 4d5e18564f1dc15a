"""Accuracy and latency databases: store, profiler, evaluator, importers."""
