"""Per-architecture defaults: which modules each method targets, so a user need not know module names.

Names follow peft's matching rule: a list entry matches a module whose full name equals it or ends with
``"." + entry``; a plain string is a regular expression that must match the whole module name.

LoRA's default is every linear projection of attention and MLP (fused ones too: Phi-3's ``qkv_proj`` and
``gate_up_proj``), never the embeddings, the output or task heads, nor a mixture-of-experts router (its ``gate``
picks experts: adapting it changes which experts run, which is not what a LoRA of the projections means). The
experts of an MoE block are 3-D parameters, not linear layers: LoRA reaches them through ``target_parameters``
(``lora_parameters`` here). A family without an entry gets its targets derived from the model
(:func:`block_linear_names`, :func:`block_expert_parameters`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchTargets:
    """Module names for one family of architectures."""

    lora: tuple[str, ...]  # every linear layer of attention and MLP
    ia3: tuple[str, ...]  # keys, values and the FFN output projection (as in the IA3 paper)
    ia3_feedforward: tuple[str, ...]  # the subset of ``ia3`` whose *input* is rescaled
    attention_output: str  # regex: the attention block's output projection (bottleneck adapters go after it)
    ffn_output: str | None  # regex: the FFN's output projection; None where it is no linear layer (MoE experts)
    lora_parameters: tuple[str, ...] = ()  # LoRA's ``target_parameters``: the experts' 3-D weights


LLAMA_LIKE = ArchTargets(
    lora=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ia3=("k_proj", "v_proj", "down_proj"),
    ia3_feedforward=("down_proj",),
    attention_output=r".*\.self_attn\.o_proj",
    ffn_output=r".*\.mlp\.down_proj",
)
MOE = ArchTargets(  # Mixtral, Qwen2-MoE, Qwen3-MoE: Llama's attention; experts as 3-D parameters
    lora=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),  # MLPs: shared/dense ones
    ia3=("k_proj", "v_proj"),  # the FFN's output is inside the experts, where IA3 has no layer to scale
    ia3_feedforward=(),
    attention_output=r".*\.self_attn\.o_proj",
    ffn_output=None,
    lora_parameters=("experts.gate_up_proj", "experts.down_proj"),
)
PHI3 = ArchTargets(
    lora=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ia3=("qkv_proj", "down_proj"),  # keys and values are fused with the queries (peft's rule for fused layers)
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
GPT_NEOX = ArchTargets(
    lora=("query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"),
    ia3=("query_key_value", "dense_4h_to_h"),
    ia3_feedforward=("dense_4h_to_h",),
    attention_output=r".*\.attention\.dense",
    ffn_output=r".*\.mlp\.dense_4h_to_h",
)
FALCON_BLOOM = ArchTargets(
    lora=("query_key_value", "self_attention.dense", "dense_h_to_4h", "dense_4h_to_h"),
    ia3=("query_key_value", "dense_4h_to_h"),
    ia3_feedforward=("dense_4h_to_h",),
    attention_output=r".*\.self_attention\.dense",
    ffn_output=r".*\.mlp\.dense_4h_to_h",
)
OPT_BART = ArchTargets(  # OPT, BART, mBART, Marian (BART's cross-attention is encoder_attn)
    lora=("q_proj", "k_proj", "v_proj", "self_attn.out_proj", "encoder_attn.out_proj", "fc1", "fc2"),
    ia3=("k_proj", "v_proj", "fc2"),
    ia3_feedforward=("fc2",),
    attention_output=r".*\.self_attn\.out_proj",
    ffn_output=r".*\.fc2",
)
BERT_LIKE = ArchTargets(
    lora=("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    ia3=("key", "value", "output.dense"),
    ia3_feedforward=("output.dense",),
    attention_output=r".*\.attention\.output\.dense",
    ffn_output=r".*\.layer\.\d+\.output\.dense",
)
DEBERTA_V2 = ArchTargets(
    lora=("query_proj", "key_proj", "value_proj", "pos_query_proj", "pos_key_proj", "attention.output.dense",
          "intermediate.dense", "output.dense"),
    ia3=("key_proj", "value_proj", "output.dense"),
    ia3_feedforward=("output.dense",),
    attention_output=r".*\.attention\.output\.dense",
    ffn_output=r".*\.layer\.\d+\.output\.dense",
)
MPNET = ArchTargets(
    lora=("attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"),
    ia3=("attn.k", "attn.v", "output.dense"),
    ia3_feedforward=("output.dense",),
    attention_output=r".*\.attention\.attn\.o",
    ffn_output=r".*\.layer\.\d+\.output\.dense",
)
DISTILBERT = ArchTargets(
    lora=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    ia3=("k_lin", "v_lin", "lin2"),
    ia3_feedforward=("lin2",),
    attention_output=r".*\.attention\.out_lin",
    ffn_output=r".*\.ffn\.lin2",
)
MODERNBERT = ArchTargets(
    lora=("Wqkv", "Wo", "Wi"),
    ia3=("Wqkv", "mlp.Wo"),  # keys and values are fused with the queries
    ia3_feedforward=("mlp.Wo",),
    attention_output=r".*\.attn\.Wo",
    ffn_output=r".*\.mlp\.Wo",
)
T5 = ArchTargets(
    lora=("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
    ia3=("k", "v", "wo"),
    ia3_feedforward=("wo",),
    attention_output=r".*\.SelfAttention\.o",
    ffn_output=r".*\.DenseReluDense\.wo",
)

_LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite",
                "smollm3")
_BY_MODEL_TYPE: dict[str, ArchTargets] = {
    **{t: LLAMA_LIKE for t in _LLAMA_TYPES},
    **{t: MOE for t in ("mixtral", "qwen2_moe", "qwen3_moe")},
    "phi3": PHI3,
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
    **{t: FALCON_BLOOM for t in ("falcon", "bloom")},
    **{t: OPT_BART for t in ("opt", "bart", "mbart", "marian")},
    **{t: BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "deberta-v2": DEBERTA_V2,
    "mpnet": MPNET,
    "distilbert": DISTILBERT,
    "modernbert": MODERNBERT,
    **{t: T5 for t in ("t5", "mt5", "umt5")},
}

# Task heads: trained in full (``modules_to_save``) whatever the method, and never quantized.
HEAD_NAMES = ("classifier", "score", "qa_outputs")
# Mixture-of-experts routers (beside an ``experts`` module): they choose experts and are never adapted.
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def arch_targets(model: nn.Module) -> ArchTargets | None:
    """The defaults for this model's architecture, or None when leantune has none for it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _BY_MODEL_TYPE.get(model_type)


def default_head_modules(model: nn.Module) -> list[str]:
    """Names of the task-head modules of a transformers model (e.g. ``classifier`` of a BERT classifier)."""
    children = dict(model.named_children())
    return [name for name in HEAD_NAMES if name in children]


def block_lists(model: nn.Module) -> list[str]:
    """Names of the model's stacks of transformer blocks: module lists whose entries are all of one class."""
    names = []
    for name, module in model.named_modules():
        kinds = {type(child) for child in module.children()} if isinstance(module, nn.ModuleList) else set()
        if len(kinds) == 1 and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def block_linear_names(model: nn.Module, is_linear: Callable[[nn.Module], bool]) -> list[str]:
    """Full names of the linear layers (``is_linear``) inside the transformer blocks: the projections of attention
    and MLP of a family leantune has no entry for. A router (named as one in ``ROUTER_NAMES``, beside an
    ``experts`` module) is left out."""
    out: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}"
            if is_linear(child):  # a layer an adapter already wraps counts as one: its insides are not walked
                if not (child_name in ROUTER_NAMES and hasattr(module, "experts")):
                    out.append(name)
            else:
                walk(child, name)

    for stack in block_lists(model):
        walk(model.get_submodule(stack), stack)
    return out


def block_expert_parameters(model: nn.Module) -> list[str]:
    """Full names of the stacked expert weights inside the transformer blocks: the 3-D parameters of a module
    named as experts (a convolution's 3-D weight is no such thing)."""
    out: dict[str, None] = {}
    for stack in block_lists(model):
        for mname, module in model.get_submodule(stack).named_modules(prefix=stack):
            owner = mname.replace(".base_layer", "")  # the name it has before an adapter wraps it
            if "expert" not in owner.rpartition(".")[2]:
                continue
            for pname, param in module.named_parameters(recurse=False):
                if param.dim() == 3:
                    out[f"{owner}.{pname}"] = None
    return list(out)
