"""Per-architecture defaults: which modules each method targets, so a user need not know module names.

Names follow peft's matching rule: a list entry matches a module whose full name equals it or ends with
``"." + entry``; a plain string is a regular expression that must match the whole module name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchTargets:
    """Module names for one family of architectures."""

    lora: tuple[str, ...]  # every linear layer of attention and MLP
    ia3: tuple[str, ...]  # keys, values and the FFN output projection (as in the IA3 paper)
    ia3_feedforward: tuple[str, ...]  # the subset of ``ia3`` whose *input* is rescaled
    attention_output: str  # regex: the attention block's output projection (bottleneck adapters go after it)
    ffn_output: str  # regex: the FFN's output projection


LLAMA_LIKE = ArchTargets(
    lora=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ia3=("k_proj", "v_proj", "down_proj"),
    ia3_feedforward=("down_proj",),
    attention_output=r".*\.self_attn\.o_proj",
    ffn_output=r".*\.mlp\.down_proj",
)
GPT2 = ArchTargets(
    lora=("c_attn", "c_proj", "c_fc"),
    ia3=("c_attn", "mlp.c_proj"),
    ia3_feedforward=("mlp.c_proj",),
    attention_output=r".*\.attn\.c_proj",
    ffn_output=r".*\.mlp\.c_proj",
)
BERT_LIKE = ArchTargets(
    lora=("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    ia3=("key", "value", "output.dense"),
    ia3_feedforward=("output.dense",),
    attention_output=r".*\.attention\.output\.dense",
    ffn_output=r".*\.layer\.\d+\.output\.dense",
)
DISTILBERT = ArchTargets(
    lora=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    ia3=("k_lin", "v_lin", "lin2"),
    ia3_feedforward=("lin2",),
    attention_output=r".*\.attention\.out_lin",
    ffn_output=r".*\.ffn\.lin2",
)
T5 = ArchTargets(
    lora=("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
    ia3=("k", "v", "wo"),
    ia3_feedforward=("wo",),
    attention_output=r".*\.SelfAttention\.o",
    ffn_output=r".*\.DenseReluDense\.wo",
)

_BY_MODEL_TYPE: dict[str, ArchTargets] = {
    **{t: LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2", "granite", "smollm3")},
    "gpt2": GPT2,
    **{t: BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet")},
    "distilbert": DISTILBERT,
    **{t: T5 for t in ("t5", "mt5", "umt5")},
}

# Task heads: trained in full (``modules_to_save``) whatever the method, and never quantized.
HEAD_NAMES = ("classifier", "score", "qa_outputs")


def arch_targets(model: nn.Module) -> ArchTargets | None:
    """The defaults for this model's architecture, or None when leantune has none for it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _BY_MODEL_TYPE.get(model_type)


def default_head_modules(model: nn.Module) -> list[str]:
    """Names of the task-head modules of a transformers model (e.g. ``classifier`` of a BERT classifier)."""
    children = dict(model.named_children())
    return [name for name in HEAD_NAMES if name in children]
