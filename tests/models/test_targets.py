"""Default targets from the model, for every family leantune has an entry for: LoRA adapts every linear
projection of attention and MLP (and the experts' 3-D weights of MoE models), counted against the model's own
projections found independently; IA3 and bottleneck adapters sit where the papers put them; a family without an
entry gets the same targets derived from its blocks."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_families import FAMILIES, tiny
from transformers.pytorch_utils import Conv1D

import leantune as lt
from leantune.errors import LeantuneError
from leantune.methods.bottleneck import BottleneckLayer
from leantune.methods.ia3 import IA3Linear
from leantune.methods.lora import LoraLinear
from leantune.methods.lora_parameters import ParamLoraLayer
from leantune.models import targets
from leantune.models.targets import arch_targets

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


def projections(model: torch.nn.Module) -> set[str]:
    """Every linear layer (or GPT-2 Conv1D) inside a numbered block, except an MoE router (``gate`` or
    ``shared_expert_gate`` beside ``experts``): embeddings, heads and poolers sit outside the blocks."""
    modules = dict(model.named_modules())
    out = set()
    for name, module in modules.items():
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or not re.search(r"\.\d+\.", name):
            continue
        parent, _, leaf = name.rpartition(".")
        if leaf in ("gate", "shared_expert_gate") and hasattr(modules[parent], "experts"):
            continue
        out.add(name)
    return out


def expert_weights(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.dim() == 3}


def adapted(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(the LoRA layers, the parameters with LoRA) of ``model``."""
    layers = {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, ParamLoraLayer) for p in m.parameter_names}
    return layers, params


def block_of(name: str) -> str:
    return re.match(r"(.*?\.\d+)\.", name).group(1)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lora_adapts_every_projection_of_attention_and_mlp(family):
    model = tiny(family)
    want = projections(model), expert_weights(model)
    assert want[0], "the family's model has projections"
    assert bool(want[1]) == (family in MOE)
    assert arch_targets(model) is not None, "an explicit entry for the family"
    lt.attach(model, lt.LoraConfig(r=2))
    assert adapted(model) == want


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_without_an_entry_gets_the_same_targets_from_its_blocks(family, monkeypatch):
    monkeypatch.setattr(targets, "_BY_MODEL_TYPE", {})
    model = tiny(family)
    want = projections(model), expert_weights(model)
    lt.attach(model, lt.LoraConfig(r=2))
    assert adapted(model) == want


@pytest.mark.parametrize("family", FAMILIES)
def test_ia3_defaults_scale_keys_values_and_the_ffn_output(family):
    model = tiny(family)
    blocks = {block_of(n) for n in projections(model)}
    lt.attach(model, lt.IA3Config())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}
    queries = ("q_proj", "query", "q_lin", "q", "query_proj")
    assert not [n for n in layers if n.split(".")[-1] in queries], "queries alone are never scaled"
    for block in blocks:
        mine = {n: m for n, m in layers.items() if n.startswith(block + ".")}
        assert any(not m.is_feedforward for m in mine.values()), block  # keys and values (or fused qkv)
        assert any(m.is_feedforward for m in mine.values()) == (family not in MOE), block


@pytest.mark.parametrize("family", FAMILIES)
def test_bottleneck_defaults_sit_after_the_attention_and_the_ffn_output(family):
    model = tiny(family)
    blocks = {block_of(n) for n in projections(model)}
    if family in MOE:
        with pytest.raises(LeantuneError, match="mixture of experts.*set target_modules"):
            lt.attach(model, lt.BottleneckConfig(bottleneck_size=4))
        return
    lt.attach(model, lt.BottleneckConfig(bottleneck_size=4))
    layers = [n for n, m in model.named_modules() if isinstance(m, BottleneckLayer)]
    assert sorted(block_of(n) for n in layers) == sorted(list(blocks) * 2)  # two per block
    lt.delete_adapter(model, "default")
    lt.attach(model, lt.BottleneckConfig(bottleneck_size=4, style="pfeiffer"))
    layers = [n for n, m in model.named_modules() if isinstance(m, BottleneckLayer)]
    assert sorted(block_of(n) for n in layers) == sorted(blocks)  # one per block: after the FFN
