"""``leantune serve``: many adapters on shared base models behind an OpenAI-compatible HTTP API.

- :mod:`~leantune.serve.layers` and :mod:`~leantune.serve.ops`: per-row adapters on a shared base (segments);
- :mod:`~leantune.serve.weights`: adapter folders read and checked into per-layer ops;
- :mod:`~leantune.serve.generation`: continuous batching for causal LMs; :mod:`~leantune.serve.encoder`:
  classification and extractive QA batches;
- :mod:`~leantune.serve.registry`: bases, adapters, LRU of loaded adapters;
- :mod:`~leantune.serve.api`, :mod:`~leantune.serve.gate`, :mod:`~leantune.serve.tasks`: the HTTP API.
"""
