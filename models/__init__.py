"""Partitionable models: builders, partition points, head/tail execution."""
