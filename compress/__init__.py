"""Compression at the cut: filter pruning, activation quantisation, bit-packing codec."""
