"""Run folders as the server sees them: which adapter, how prompts are written, and the parts of tasks, methods and
generation the server uses. The run folder itself is read by :mod:`leantune.run.loader` (:class:`ServedRun`).

This is the one place where serving reaches into the rest of leantune (tasks, methods, generation), so a change
there is met here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from leantune.errors import LeantuneError

if TYPE_CHECKING:
    from leantune.run.loader import ServedRun


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
    from leantune.system.memory import heap_trimmer as trimmer

    return trimmer(device)
