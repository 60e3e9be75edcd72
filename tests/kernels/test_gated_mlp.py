"""Gated MLPs that keep less for backward give the plain model's outputs and gradients (SwiGLU in Llama, GeGLU in
Gemma 3) and keep one intermediate-size tensor less per layer."""

import copy

import pytest
import torch
from tiny_gemma3 import gemma3_lm
from tiny_models import assert_same_step, llama, training_step

from leantune.kernels.gated_mlp import lean_gated_mlps


@pytest.mark.parametrize("make", [llama, gemma3_lm], ids=["llama-swiglu", "gemma3-geglu"])
def test_outputs_and_gradients_equal_the_plain_model(make):
    plain = make()
    lean = copy.deepcopy(plain)
    assert lean_gated_mlps(lean) == plain.config.num_hidden_layers
    ids = torch.randint(3, 40, (2, 9))
    assert_same_step(training_step(lean, ids), training_step(plain, ids))


def test_one_intermediate_tensor_less_is_kept():
    def kept_elements(model) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(3, 40, (2, 9)), use_cache=False).logits.sum()
        return sum(sizes)

    plain = llama()
    lean = copy.deepcopy(plain)
    lean_gated_mlps(lean)
    # one tensor of 2 x 9 tokens x 64 (intermediate size) per layer, 2 layers
    assert kept_elements(plain) - kept_elements(lean) == 2 * 9 * 64 * 2


@pytest.mark.parametrize("act", [torch.nn.SiLU(), torch.nn.GELU(approximate="tanh"), torch.nn.ReLU(),
                                 torch.nn.GELU()], ids=["silu", "gelu-tanh", "relu-generic", "gelu-erf-generic"])
def test_the_gated_product_and_its_gradients_equal_autograds(act):
    from leantune.kernels.gated_mlp import gated_product

    torch.manual_seed(0)
    gate, up, grad = torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    results = []
    for fn in (lambda g, u: act(g) * u, lambda g, u: gated_product(g, u, act)):
        g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
        out = fn(g, u)
        out.backward(grad)
        results.append((out.detach(), g.grad, u.grad))
    for lean, plain in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(lean, plain)


def test_the_models_activations_take_the_one_kernel_derivative():
    from leantune.kernels.gated_mlp import _gelu_tanh_derivative, _in_place_derivative, _silu_derivative

    assert _in_place_derivative(llama().model.layers[0].mlp.act_fn) is _silu_derivative
    assert _in_place_derivative(gemma3_lm().model.layers[0].mlp.act_fn) is _gelu_tanh_derivative
    assert _in_place_derivative(torch.nn.ReLU()) is None
