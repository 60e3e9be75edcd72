"""Gated MLPs that keep less for backward give the plain model's outputs and gradients (SwiGLU in Llama, GeGLU in
Gemma 3) and keep one intermediate-size tensor less per layer."""

import copy

import pytest
import torch
from tiny_gemma3 import gemma3_lm

from leantune.kernels.gated_mlp import lean_gated_mlps


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("make", [_tiny_llama, gemma3_lm], ids=["llama-swiglu", "gemma3-geglu"])
def test_outputs_and_gradients_equal_the_plain_model(make):
    plain = make()
    lean = copy.deepcopy(plain)
    assert lean_gated_mlps(lean) == plain.config.num_hidden_layers
    ids = torch.randint(3, 40, (2, 9))
    grads = []
    for model in (plain, lean):
        model.train()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        grads.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, msg=name)


def test_one_intermediate_tensor_less_is_kept():
    def kept_elements(model) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(3, 40, (2, 9)), use_cache=False).logits.sum()
        return sum(sizes)

    plain = _tiny_llama()
    lean = copy.deepcopy(plain)
    lean_gated_mlps(lean)
    # one tensor of 2 x 9 tokens x 64 (intermediate size) per layer, 2 layers
    assert kept_elements(plain) - kept_elements(lean) == 2 * 9 * 64 * 2
