"""Packed rows give the same loss and gradients as the same examples unpacked."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import llama

import leantune as lt
from leantune.data.batching import pad_batch
from leantune.data.packing import pack_examples
from leantune.kernels.linear_cross_entropy import fusable_head, hidden_states_as_logits, linear_cross_entropy
from leantune.methods.lora import LoraConfig


def _examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 14)
        ids = [rng.randint(3, 95) for _ in range(length)]
        prompt = rng.randint(1, length - 1)
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _loss(model, batch) -> torch.Tensor:
    head = fusable_head(model)
    with hidden_states_as_logits(model, head):
        if "position_ids" in batch:
            hidden = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        else:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    hidden, targets = hidden[:, :-1], batch["labels"][:, 1:]
    keep = targets != -100
    return linear_cross_entropy(hidden[keep], head.weight, targets[keep])


def _loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = _loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_rows_hold_whole_examples_within_max_length():
    examples = _examples(40)
    rows = pack_examples(examples, max_length=32, seed=3)
    assert all(len(r["input_ids"]) <= 32 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    assert len(rows) < len(examples) / 2
    for r in rows:  # positions restart at every example; each example's first token is not a target
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert all(r["labels"][i] == -100 for i in starts)
    with pytest.raises(ValueError, match="max_length"):
        pack_examples(examples, max_length=8)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked_loss_and_gradients(attn):
    model = llama()
    model.config._attn_implementation = attn
    lt.attach(model, LoraConfig(r=4, init="random", target_modules="all-linear"))
    examples = _examples(7, seed=1)
    unpacked = pad_batch(examples, pad_id=0)
    packed = pad_batch(pack_examples(examples, max_length=40, seed=0), pad_id=0)
    assert packed["input_ids"].shape[0] < len(examples)
    loss_u, grads_u = _loss_and_grads(model, unpacked)
    loss_p, grads_p = _loss_and_grads(model, packed)
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for name, g in grads_u.items():
        scale = float(g.abs().max())  # fp32 summation order differs: compare relative to the gradient's size
        assert float((grads_p[name] - g).abs().max()) <= 1e-5 * scale, name
