"""Run folders as the server sees them: which adapter, how prompts are written, and the parts of tasks, methods and
generation the server uses. The run folder itself is read by :mod:`leantune.run.loader` (:class:`ServedRun`).

This is the one place where serving reaches into the rest of leantune (tasks, methods, generation), so a change
there is met here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch import nn

from leantune.errors import LeantuneError

if TYPE_CHECKING:
    from leantune.run.loader import ServedRun


def parse_adapter_config(folder: Path) -> None:
    """leantune's own check of an adapter config (unknown peft options, bad values): a LeantuneError if wrong."""
    from leantune.adapters import read_adapter_config

    try:
        read_adapter_config(folder)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise LeantuneError(f"{folder / 'adapter_config.json'}: {field}: {err['msg']}") from None


WEIGHT_UPDATE_PARTS = ("lokr_", "oft_", "vera_lambda_")
"""The key parts of the methods served through leantune's own layers (LoKr, OFT, VeRA)."""


def meta_model(task: Any, model_path: str) -> nn.Module:
    """The run's model (as its task builds it) on the meta device: its module tree without weights."""
    return task.build_model(model_path, meta=True)


def weight_update_ops(skeleton: nn.Module, folder: Path, layers: dict[str, nn.Module], names: list[str],
                      device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Per-row ops of a LoKr, OFT or VeRA adapter, computed by leantune's own layers of that method: the adapter is
    loaded (``lt.load_adapter``, with its checks) into ``skeleton`` (the base's architecture, e.g. from
    :func:`meta_model`) after its adapted layers ``names`` are replaced by copies of the base's ``layers``; the
    base is not touched.

    LoKr becomes its dense ΔW (:class:`DeltaOp`), VeRA a LoRA op (``Λ_d A`` and ``Λ_b B``: the same function at
    rank r), OFT its rotation of the layer's input (:class:`InputRotationOp`)."""
    import copy

    import leantune as lt
    from leantune.methods.base import in_out_features
    from leantune.methods.lokr import LoKrLinear
    from leantune.methods.oft import OFTLinear
    from leantune.methods.vera import VeraLinear
    from leantune.serve.ops import DeltaOp, InputRotationOp, LoraOp

    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(skeleton.get_submodule(parent_name) if parent_name else skeleton, child, copy.deepcopy(layers[name]))
    lt.load_adapter(skeleton, folder)
    ops: dict[str, Any] = {}
    with torch.no_grad():
        for name in names:
            layer = skeleton.get_submodule(name)
            if isinstance(layer, LoKrLinear):
                ops[name] = DeltaOp(layer.delta_weight("default").to(device=device, dtype=dtype))
            elif isinstance(layer, VeraLinear):
                fan_in, fan_out = in_out_features(layer.base_layer)
                a, b = layer.vera_projections.pair("default")
                A = layer.vera_lambda_d["default"][:, None] * a[:, :fan_in]
                B = layer.vera_lambda_b["default"][:, None] * b[:fan_out, :]
                ops[name] = LoraOp(A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype))
            elif isinstance(layer, OFTLinear):
                rotate = layer.oft_R["default"].to(device).eval()
                ops[name] = InputRotationOp(rotate, rotate.weight.dtype)
    return ops


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """A layer's weight as (out_features, in_features), dequantised if needed."""
    from leantune.methods.base import weight_as_out_in

    return weight_as_out_in(layer)


def servable_layer_types() -> tuple[type, ...]:
    from leantune.methods.base import LINEAR_TYPES

    return (*LINEAR_TYPES, nn.Embedding)


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
