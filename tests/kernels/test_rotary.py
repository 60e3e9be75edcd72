"""Rotary embedding as one autograd node gives transformers' rotation and its gradients for every family it
replaces, leaves mismatched dimensions and dtypes to the original, and is installed once per family."""

import importlib

import pytest
import torch
from tiny_gemma3 import gemma3_lm
from tiny_models import assert_same_step, llama, training_step

from leantune.kernels.rotary import ROTARY_FAMILIES, patch_transformers_rotary, rotate


def _original(family: str):
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    current = module.apply_rotary_pos_emb
    return getattr(current, "leantune_original", current)


def _rope_inputs(batch=2, heads=4, kv_heads=2, tokens=7, dim=16):
    torch.manual_seed(0)
    # q and k as the attention layers make them: (batch, tokens, heads, dim) views transposed to heads first
    q = torch.randn(batch, tokens, heads, dim).transpose(1, 2)
    k = torch.randn(batch, tokens, kv_heads, dim).transpose(1, 2)
    angles = torch.randn(batch, tokens, dim // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return q, k, cos, sin


@pytest.mark.parametrize("family", sorted(ROTARY_FAMILIES))
def test_rotation_and_gradients_equal_transformers(family):
    q, k, cos, sin = _rope_inputs()
    grads = torch.randn(q.shape), torch.randn(k.shape)
    results = []
    for apply in (_original(family), lambda q, k, c, s: (rotate(q, c[:, None], s[:, None]),
                                                         rotate(k, c[:, None], s[:, None]))):
        qi, ki = q.clone().requires_grad_(), k.clone().requires_grad_()
        outs = apply(qi, ki, cos, sin)
        torch.autograd.backward(outs, grads)
        results.append((*(o.detach() for o in outs), qi.grad, ki.grad))
    for lean, plain in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(lean, plain)


def test_installed_once_and_only_for_its_families():
    import transformers.models.llama.modeling_llama as modeling
    from transformers import BertConfig, BertModel

    model = llama()
    assert patch_transformers_rotary(model) and patch_transformers_rotary(model)
    installed = modeling.apply_rotary_pos_emb
    assert installed.leantune_original is _original("llama")
    assert not hasattr(installed.leantune_original, "leantune_original")  # not wrapped twice
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64))
    assert not patch_transformers_rotary(bert)


def test_mismatched_dimensions_and_dtypes_fall_back_to_the_original():
    import transformers.models.llama.modeling_llama as modeling

    patch_transformers_rotary(llama())
    q, k, cos, sin = _rope_inputs()
    short_cos, short_sin = cos[..., :8], sin[..., :8]
    with pytest.raises(RuntimeError):  # transformers' own error for mismatched dimensions, not a silent result
        modeling.apply_rotary_pos_emb(q, k, short_cos, short_sin)
    mixed = modeling.apply_rotary_pos_emb(q.to(torch.float64), k.to(torch.float64), cos, sin)
    expected = _original("llama")(q.to(torch.float64), k.to(torch.float64), cos, sin)
    assert torch.equal(mixed[0], expected[0])


@pytest.mark.parametrize("family, make", [("llama", llama), ("gemma3", gemma3_lm)])
def test_a_whole_model_gives_the_same_outputs_and_gradients(family, make, monkeypatch):
    model = make()
    assert patch_transformers_rotary(model)
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    ids = torch.randint(3, 40, (2, 9))
    lean = training_step(model, ids)
    monkeypatch.setattr(module, "apply_rotary_pos_emb", _original(family))
    assert_same_step(lean, training_step(model, ids))
