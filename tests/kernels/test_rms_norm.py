"""RMSNorm as one autograd node gives the model's own norm's outputs and gradients (weight·x̂ in Llama, Mistral,
Qwen; (1 + weight)·x̂ in Gemma), in a single norm and in a whole model, and leaves other dtypes to the model."""

import copy
import importlib

import pytest
import torch
from tiny_gemma3 import gemma3_lm
from tiny_models import assert_same_step, llama, training_step

from leantune.kernels.rms_norm import ONE_PLUS_WEIGHT, WEIGHT_TIMES_NORM, patch_model_rms_norms

FAMILIES = {"Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3", "Gemma": "gemma",
            "Gemma2": "gemma2", "Gemma3": "gemma3"}


def _norm(class_name: str, dim: int = 24):
    family = FAMILIES[class_name.removesuffix("RMSNorm")]
    cls = getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), class_name)
    torch.manual_seed(0)
    norm = cls(dim, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(0.5, 0.3)
    return norm


@pytest.mark.parametrize("class_name", sorted(WEIGHT_TIMES_NORM | ONE_PLUS_WEIGHT))
@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen", "trained"])
def test_one_norm_gives_the_models_outputs_and_gradients(class_name, train_weight):
    plain = _norm(class_name)
    lean = copy.deepcopy(plain)
    assert patch_model_rms_norms(lean) == 1
    x = torch.randn(3, 7, 24) * 2.0
    grad = torch.randn(3, 7, 24)
    results = []
    for norm in (plain, lean):
        norm.weight.requires_grad_(train_weight)
        xi = x.clone().requires_grad_()
        out = norm(xi)
        out.backward(grad)
        results.append((out.detach(), xi.grad, norm.weight.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    if train_weight:
        torch.testing.assert_close(results[1][2], results[0][2])
    else:
        assert results[1][2] is None


def test_other_dtypes_run_the_models_own_norm():
    plain = _norm("LlamaRMSNorm").to(torch.bfloat16)
    lean = copy.deepcopy(plain)
    patch_model_rms_norms(lean)
    x = torch.randn(2, 5, 24, dtype=torch.bfloat16)
    assert torch.equal(lean(x), plain(x))


@pytest.mark.parametrize("make, norms", [(llama, 2 * 2 + 1), (gemma3_lm, 6 * 2 + 1)],
                         ids=["llama", "gemma3-with-qk-norms"])
def test_a_whole_model_gives_the_same_outputs_and_gradients(make, norms):
    plain = make()
    lean = copy.deepcopy(plain)
    assert patch_model_rms_norms(lean) == norms
    ids = torch.randint(3, 40, (2, 9))
    assert_same_step(training_step(lean, ids), training_step(plain, ids))
