"""The serving process: options, the registry of bases and adapters, one engine thread per base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leantune.errors import LeantuneError
from leantune.generate import eos_ids, sample_tokens
from leantune.models.compat import cache_kwarg
from leantune.serve.cache import uses_full_attention_cache
from leantune.serve.encoder import EncoderEngine
from leantune.serve.generation import GenerationEngine
from leantune.serve.metrics import Metrics
from leantune.serve.registry import Registry, ServedBase
from leantune.serve.weights import AdapterRejected

ADMIN_TOKEN_ENV = "LEANTUNE_ADMIN_TOKEN"
API_KEY_ENV = "LEANTUNE_API_KEY"
"""Read by ``leantune serve`` on the command line; a server built in-process (the dashboard's playground) has only
the options it is given."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_queue: int = 256
    max_adapters: int | None = None
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    default_max_tokens: int = 256
    api_key: str | None = None
    admin_token: str | None = None
    adapter_root: str | None = None
    limit_concurrency: int = 1024
    """Open connections and running requests at most; over it, uvicorn answers 503 at once."""
    shutdown_timeout: float = 60.0
    """Seconds in-flight requests get to finish on Ctrl-C / SIGTERM; then they are cancelled."""

    def __post_init__(self) -> None:
        self.api_key = self.api_key or None
        self.admin_token = self.admin_token or None
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_prompt_tokens", "max_tokens",
                     "limit_concurrency"):
            if getattr(self, name) < 1:
                raise LeantuneError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.shutdown_timeout < 0:
            raise LeantuneError("--shutdown-timeout must not be negative.")
        if self.max_adapters is not None and self.max_adapters < 1:
            raise LeantuneError("--max-adapters must be at least 1.")
        if self.admin_token and not self.adapter_root:
            raise LeantuneError("an admin token turns on POST /v1/adapters, which needs --adapter-root (the folder "
                                "adapters may be loaded from).")
        if self.adapter_root and not Path(self.adapter_root).is_dir():
            raise LeantuneError(f"--adapter-root {self.adapter_root} is not a folder.")


class Server:
    """Everything the HTTP app serves from."""

    def __init__(self, runs: list[tuple[str, str]], options: ServeOptions) -> None:
        if not runs:
            raise LeantuneError("give at least one run folder to serve.")
        names = [n for n, _ in runs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise LeantuneError(f"two runs would be served as {dup}; name them with --name NAME=RUN_DIR.")
        self.options = options
        self.metrics = Metrics()
        self.registry = Registry(options.max_adapters)
        self.draining = False
        for name, path in runs:
            try:
                self.registry.register(name, path)
            except AdapterRejected as e:
                raise LeantuneError(f"cannot serve {path} as '{name}': {e}") from None
        for base in self.registry.bases.values():
            base.engine = self._engine(base)

    def _engine(self, base: ServedBase) -> GenerationEngine | EncoderEngine:
        o = self.options
        on_step = self.metrics.step(base.name)
        if base.kind != "generate":
            return EncoderEngine(base.model, base.ctx, base.lock, base.tokenizer.pad_token_id or 0,
                                 max_rows=max(o.max_batch, 64), max_queue=o.max_queue, on_step=on_step)
        if getattr(base.model.config, "is_encoder_decoder", False):
            raise LeantuneError(f"{base.run.run_dir}: encoder-decoder (seq2seq) models are not served yet; serve a "
                                "decoder-only model's runs.")
        if not uses_full_attention_cache(base.model):
            raise LeantuneError(f"{base.run.cfg.model}: its KV cache has sliding-window or recurrent layers, which "
                                "leantune serve does not batch yet.")

        return GenerationEngine(base.model, base.tokenizer, base.ctx, base.lock,
                                eos_ids(base.model, base.tokenizer), sample_tokens, cache_kwarg(base.model),
                                max_batch=o.max_batch, max_queue=o.max_queue,
                                context_length=context_length(base), on_step=on_step)

    def start(self) -> None:
        for base in self.registry.bases.values():
            base.engine.start()

    def stop(self) -> None:
        """Finish what is queued and running, then stop the engine threads."""
        self.draining = True
        for base in self.registry.bases.values():
            base.engine.stop()

    def gauges(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        bases = self.registry.bases.values()
        return {
            "leantune_queue_depth": [({"base": b.name}, b.engine.queue_depth) for b in bases],
            "leantune_batch_size": [({"base": b.name}, b.engine.batch_size) for b in bases],
            "leantune_adapters_loaded": [({}, self.registry.loaded_count)],
            "leantune_adapters_registered": [({}, len(self.registry.adapters))],
        }


def context_length(base: ServedBase) -> int | None:
    config = base.model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def parse_runs(run_dirs: list[str], named: list[str]) -> list[tuple[str, str]]:
    """(name, run folder) pairs from positional RUN_DIRs (named after their folder) and --name NAME=RUN_DIR."""
    runs = [(Path(p).resolve().name, p) for p in run_dirs]
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LeantuneError(f"--name {item!r}: expected NAME=RUN_DIR.")
        runs.append((name, path))
    return runs
