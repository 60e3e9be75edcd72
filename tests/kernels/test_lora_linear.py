"""The fused LoRA linear node equals the unfused computation (outputs and gradients), and LoraLinear takes it only
where it applies: training, plain LoRA, no dropout, a frozen nn.Linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leantune.kernels import lora_linear as kernel
from leantune.kernels.lora_linear import lora_linear
from leantune.methods.lora import LoraConfig, LoraLinear


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
def test_outputs_and_gradients_match_autograd(with_bias, input_grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 12, generator=g, requires_grad=input_grad)
    weight = torch.randn(10, 12, generator=g)
    bias = torch.randn(10, generator=g) if with_bias else None
    a = torch.randn(4, 12, generator=g, requires_grad=True)
    b = torch.randn(10, 4, generator=g, requires_grad=True)
    grad_out = torch.randn(3, 7, 10, generator=g)

    ref = F.linear(x, weight, bias) + F.linear(F.linear(x, a) * 0.5, b)
    ref.backward(grad_out)
    ref_grads = [t.grad.clone() for t in (x, a, b) if t.requires_grad]
    for t in (x, a, b):
        t.grad = None

    got = lora_linear(x, weight, bias, a, b, 0.5)
    got.backward(grad_out)
    torch.testing.assert_close(got, ref)
    for mine, theirs in zip([t.grad for t in (x, a, b) if t.requires_grad], ref_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def _layer(**cfg) -> LoraLinear:
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    base.requires_grad_(False)
    layer = LoraLinear(base)
    layer.add("default", LoraConfig(r=4, **cfg))
    layer.active_adapter = "default"
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # a non-zero update
    return layer


def _count_fused(monkeypatch) -> list[int]:
    calls = []
    original = kernel._LoraLinear.apply

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(kernel._LoraLinear, "apply", counted)
    return calls


def test_training_uses_the_fused_node_and_evaluation_the_plain_path(monkeypatch):
    layer = _layer()
    calls = _count_fused(monkeypatch)
    x = torch.randn(2, 5, 12, requires_grad=True)
    y = layer(x)
    assert calls == [1]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y.detach())
    assert calls == [1]  # evaluation: the unfused path, as generation and serving compute it


@pytest.mark.parametrize("setting", ["dropout", "dora", "trainable bias", "hook"])
def test_what_the_fused_node_cannot_do_takes_the_plain_path(monkeypatch, setting):
    layer = _layer(dropout=0.1) if setting == "dropout" else _layer(use_dora=setting == "dora")
    if setting == "trainable bias":
        layer.base_layer.bias.requires_grad_(True)
    if setting == "hook":
        layer.base_layer.register_forward_hook(lambda *_: None)
    calls = _count_fused(monkeypatch)
    layer(torch.randn(2, 5, 12, requires_grad=True)).sum().backward()
    assert calls == []
