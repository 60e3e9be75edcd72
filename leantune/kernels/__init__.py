"""Fused and chunked operations that save memory or time in training."""
