"""Run folders as the server sees them: which base, which task, which adapter, how prompts are written.

This is the one place where serving reaches into the rest of leantune (config, tasks, model loading), so a change
there is met here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from leantune.errors import LeantuneError

KINDS = {"instruction": "generate", "translation": "generate", "classification": "classify",
         "extractive_qa": "answer"}


@dataclass
class ServedRun:
    """A finished run folder: its config, its adapter folder, and the base it needs."""

    name: str
    run_dir: Path
    cfg: Any  # leantune.config.RunConfig
    model_path: str
    labels: list[str] | None

    @property
    def kind(self) -> str:
        """What the run serves: generate (chat / completions), classify or answer (extractive QA)."""
        return KINDS[self.cfg.task]

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def base_key(self) -> tuple:
        """Runs with the same key share one copy of the base model."""
        cfg = self.cfg
        head = f"classification:{cfg.task_args.pooling}" if cfg.task == "classification" else self.kind
        return (self.model_path, head, cfg.quantize, cfg.trust_remote_code, cfg.allow_pickle_weights)


def read_run(run_dir: str | os.PathLike, name: str | None = None) -> ServedRun:
    """Check a run folder (config, adapter, labels) without loading any weights."""
    from leantune.config import validate_config
    from leantune.models.registry import resolve_model

    run = Path(run_dir).expanduser()
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise LeantuneError(f"{run} is not a leantune run folder: it has no config.yaml.")
    try:
        cfg = validate_config(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    except yaml.YAMLError as e:
        raise LeantuneError(f"{cfg_file}: not valid YAML ({e}).") from None
    if not (run / "adapter").is_dir():
        raise LeantuneError(f"{run}: no adapter/ folder (did the run finish?).")
    labels_file = run / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    if cfg.task == "classification" and not labels:
        raise LeantuneError(f"{run}: a classification run needs its labels.json.")
    return ServedRun(name or run.resolve().name, run.resolve(), cfg, resolve_model(cfg.model), labels)


def make_run_task(run: ServedRun, tokenizer: Any) -> Any:
    """The run's task object (prompt formatting, model building), with the run's artifacts (labels) read."""
    from leantune.tasks import make_task

    task = make_task(run.cfg, tokenizer, run.model_path)
    task.load_artifacts(run.run_dir)
    return task


def load_tokenizer(run: ServedRun) -> Any:
    from leantune.models.loading import load_tokenizer as load

    return load(run.model_path, run.cfg.trust_remote_code)


def load_base(run: ServedRun, tokenizer: Any) -> nn.Module:
    """The base model of ``run`` without any adapter (built as the run's task builds it), in eval mode."""
    model = make_run_task(run, tokenizer).build_model(run.model_path)
    if run.cfg.quantize != "none":
        from leantune.models.quantize import quantize_model, resolve_backend

        device = next(model.parameters()).device
        quantize_model(model, run.cfg.quantize, resolve_backend(run.cfg.quantize_backend, device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def stop_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    from leantune.generate import eos_ids

    return eos_ids(model, tokenizer)


def chat_prompt(run: ServedRun, task: Any, messages: list[dict[str, str]]) -> str:
    """The prompt for chat ``messages`` exactly as the run was trained (its template and system prompt)."""
    return task.conversation_prompt(messages)


def qa_windows(tokenizer: Any, question: str, context: str, run: ServedRun) -> Any:
    from leantune.tasks.extractive_qa import make_windows

    max_length = run.cfg.train.max_length
    return make_windows(tokenizer, [question], [context], max_length, run.cfg.task_args.doc_stride or max_length // 3)


def cache_kwarg(model: nn.Module) -> str:
    from leantune.models.compat import cache_kwarg as kwarg

    return kwarg(model)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> torch.Tensor:
    """leantune generate's sampling, so a seeded request samples what ``leantune generate`` samples."""
    from leantune.generate import sample_tokens as sample

    return sample(logits, temperature, top_p, generator)


def uses_full_attention_cache(model: nn.Module) -> bool:
    """Whether every layer of the model's KV cache is plain full attention (what the batch cache handles)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def heap_trimmer(device: torch.device) -> Any:
    """A function that hands the heap's free pages back to the OS (glibc on CPU; else a no-op): decode steps
    allocate and free attention buffers that grow by a column each step, which fragments the heap."""
    from leantune.train.memory import heap_trimmer as trimmer

    return trimmer(device)
