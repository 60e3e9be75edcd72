"""Data: readers, cleaning, labels, tokenisation and batching."""
