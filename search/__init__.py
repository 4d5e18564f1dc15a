"""Searches over the scheme space: latency model, monotone bounds, samplers, query runner."""
