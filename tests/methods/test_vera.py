"""VeRA: peft parity both ways (projections from the file, or rebuilt from the key), the shared frozen matrices,
trained vectors, several adapters. (The contract every method keeps runs in test_every_method.)"""

from __future__ import annotations

import pytest
import torch
from peft import VeraConfig as PeftVera
from peft.tuners.vera.model import _kaiming_init
from peft_oracle import parity_tests
from safetensors.torch import load_file
from tiny_models import batch, gpt2, llama, output_of

import leantune as lt
from leantune.methods.vera import VeraLinear, VeraProjections

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    ("llama", "llama", lt.VeraConfig(r=16), PeftVera(r=16, target_modules=LLAMA_ALL)),
    ("gpt2-conv1d", "gpt2", lt.VeraConfig(r=16),
     PeftVera(r=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    ("bert-head-vera-only-bias", "bert", lt.VeraConfig(r=8, bias="vera_only", target_modules=["query", "value"]),
     PeftVera(task_type="SEQ_CLS", r=8, bias="vera_only", target_modules=["query", "value"])),
    ("t5-no-saved-projection", "t5", lt.VeraConfig(r=16, save_projection=False, projection_prng_key=7,
                                                   target_modules=["q", "v", "wo"]),
     PeftVera(task_type="SEQ_2_SEQ_LM", r=16, save_projection=False, projection_prng_key=7,
              target_modules=["q", "v", "wo"])),
]


def _new_projections(model):
    """Other random matrices than the key gives: only a loader that reads them from the file matches."""
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "vera_A" in name or "vera_B" in name or ".A_" in name or ".B_" in name:
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.3)


test_leantune_vera_loads_in_peft, test_peft_vera_loads_in_leantune = parity_tests(
    CASES, prepare_for=lambda case: _new_projections if case[2].save_projection else None)


def test_one_pair_of_frozen_matrices_shared_by_every_layer(tmp_path):
    model = lt.attach(llama(), lt.VeraConfig(r=16))
    layers = [m for m in model.modules() if isinstance(m, VeraLinear)]
    assert len(layers) == 14 and len({id(m.vera_projections) for m in layers}) == 1
    a, b = layers[0].vera_projections.pair("default")
    assert a.shape == (16, 64) and b.shape == (64, 16)  # largest in (down: 64), largest out (gate/up: 64)
    assert not a.requires_grad and not b.requires_grad
    g = torch.Generator().manual_seed(0)  # drawn as peft draws them from projection_prng_key
    torch.testing.assert_close(a, _kaiming_init((16, 64), generator=g))
    torch.testing.assert_close(b, _kaiming_init((64, 16), generator=g))
    # trained: lambda_b (out) and lambda_d (r) per layer
    per_block = (32 + 16 + 16 + 32 + 64 + 64 + 32) + 7 * 16  # out features of q k v o gate up down; 7 x r
    assert lt.trainable_parameters(model)[0] == 2 * per_block
    model.double()  # the shared module moves once, with the model
    assert layers[3].vera_projections.pair("default")[0].dtype == torch.float64
    assert "vera_projections" not in " ".join(model.state_dict())  # not in the model's state dict

    lt.save_adapter(model.float(), tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved["base_model.vera_A"].shape == (16, 64) and saved["base_model.vera_B"].shape == (64, 16)


def test_starts_as_the_base_and_computes_lambda_b_B_lambda_d_A():
    inputs = batch("gpt2")
    model = lt.attach(gpt2(), lt.VeraConfig(r=8, init_weights=False, target_modules=["c_attn"]))
    layer = model.transformer.h[0].attn.c_attn
    a, b = layer.vera_projections.pair("default")
    x = torch.randn(3, 32)
    lb, ld = layer.vera_lambda_b["default"], layer.vera_lambda_d["default"]
    with torch.no_grad():
        delta = (lb[:, None] * b[:96]) @ (ld[:, None] * a[:, :32])
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ delta.T)
    fresh = lt.attach(gpt2(), lt.VeraConfig(r=8))
    torch.testing.assert_close(output_of(fresh, inputs), output_of(gpt2(), inputs))


def test_without_saved_projections_they_are_rebuilt_from_the_key(tmp_path):
    model = lt.attach(llama(), lt.VeraConfig(r=8, save_projection=False, projection_prng_key=3, init_weights=False))
    lt.save_adapter(model, tmp_path)
    assert not any("vera_A" in k for k in load_file(str(tmp_path / "adapter_model.safetensors")))
    inputs = batch("llama")
    torch.testing.assert_close(output_of(lt.load_adapter(llama(), tmp_path), inputs), output_of(model, inputs))


def test_two_adapters_each_keep_their_projections():
    inputs = batch("llama")
    model = lt.attach(llama(), lt.VeraConfig(r=8, init_weights=False, target_modules=["q_proj"]))
    lt.add_adapter(model, "other", lt.VeraConfig(r=4, projection_prng_key=1, init_weights=False,
                                                 target_modules=["q_proj", "v_proj"]))
    first = output_of(model, inputs)
    lt.set_adapter(model, "other")
    assert not torch.allclose(output_of(model, inputs), first)
    lt.delete_adapter(model, "default")
    projections = next(m for m in model.modules() if isinstance(m, VeraProjections))
    assert projections.pair("other")[0].shape == (4, 32)
    with pytest.raises(AttributeError):
        projections.pair("default")


