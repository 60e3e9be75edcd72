"""Activation checkpointing changes memory, not maths: same loss and gradients for every method and architecture."""

from __future__ import annotations

import pytest
import torch
from every_method_combos import COMBOS, METHOD_CONFIGS
from tiny_models import FACTORIES, batch

import leantune as lt
from leantune.train.activation_checkpointing import enable_activation_checkpointing, transformer_blocks


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # same dropout masks; the checkpoint replays the RNG state in the recompute
    out = model(**inputs)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,method", COMBOS)
def test_checkpointed_equals_plain(arch, method):
    torch.manual_seed(0)
    model = lt.attach(FACTORIES[arch](), METHOD_CONFIGS[method]()).train()
    inputs = batch(arch)
    loss, grads = _loss_and_grads(model, inputs)
    assert enable_activation_checkpointing(model) == len(transformer_blocks(model)) > 0
    loss_ckpt, grads_ckpt = _loss_and_grads(model, inputs)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_blocks_are_recomputed_in_backward():
    model = lt.attach(FACTORIES["llama"](), lt.LoraConfig(r=4)).train()
    enable_activation_checkpointing(model)
    calls = []
    block = transformer_blocks(model)[0]
    block.self_attn.register_forward_hook(lambda *a: calls.append(1))
    model(**batch("llama")).loss.backward()
    assert len(calls) == 2  # forward + recompute (torch stops recomputing once the saved tensors it needs are back)
    with torch.no_grad():
        calls.clear()
        model(**batch("llama"))
        assert len(calls) == 1
