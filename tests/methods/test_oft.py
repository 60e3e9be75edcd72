"""OFT: peft parity both ways (Cayley exact and Cayley-Neumann, block sharing, COFT, biases), orthogonality, block
sizing, dropout, refusals. (The contract every method keeps runs in test_every_method.)"""

from __future__ import annotations

import json

import pytest
import torch
from peft import OFTConfig as PeftOFT
from peft.tuners.oft.layer import OFTLayer
from peft_oracle import parity_tests
from tiny_models import batch, gpt2, llama, output_of

import leantune as lt
from leantune.config import validate_config
from leantune.methods.oft import OFTLinear, fit_to_divisor

CASES = [
    ("llama-neumann", "llama", lt.OFTConfig(oft_block_size=8, target_modules=["q_proj", "v_proj", "down_proj"]),
     PeftOFT(oft_block_size=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("llama-exact-cayley", "llama", lt.OFTConfig(oft_block_size=16, use_cayley_neumann=False),
     PeftOFT(oft_block_size=16, use_cayley_neumann=False,
             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    ("llama-r-blocks-3-terms", "llama", lt.OFTConfig(r=4, num_cayley_neumann_terms=3, target_modules=["q_proj"]),
     PeftOFT(r=4, oft_block_size=0, num_cayley_neumann_terms=3, target_modules=["q_proj"])),
    ("llama-block-share-coft", "llama", lt.OFTConfig(r=4, block_share=True, coft=True, eps=0.05,
                                                     target_modules=["q_proj", "v_proj", "down_proj"]),
     PeftOFT(r=4, oft_block_size=0, block_share=True, coft=True, eps=0.05,
             target_modules=["q_proj", "v_proj", "down_proj"])),
    ("bert-head-oft-only-bias", "bert", lt.OFTConfig(oft_block_size=16, bias="oft_only",
                                                     target_modules=["query", "value"]),
     PeftOFT(task_type="SEQ_CLS", oft_block_size=16, bias="oft_only", target_modules=["query", "value"])),
    ("t5", "t5", lt.OFTConfig(oft_block_size=8, target_modules=["q", "v", "wo"]),
     PeftOFT(task_type="SEQ_2_SEQ_LM", oft_block_size=8, target_modules=["q", "v", "wo"])),
]


test_leantune_oft_loads_in_peft, test_peft_oft_loads_in_leantune = parity_tests(CASES)


def _q_proj(cfg):
    return lt.attach(llama(), cfg).model.layers[0].self_attn.q_proj


def test_rotation_is_block_diagonal_and_orthogonal():
    layer = _q_proj(lt.OFTConfig(oft_block_size=8, use_cayley_neumann=False, init_weights=False))
    R = layer.oft_R["default"].matrix()
    assert R.shape == (32, 32)
    torch.testing.assert_close(R @ R.T, torch.eye(32), atol=1e-5, rtol=0)
    assert torch.count_nonzero(R[:8, 8:]) == 0 and torch.count_nonzero(R[8:16, :8]) == 0
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x @ R))
        # the Neumann series approximates the same Cayley transform (of -Q: peft's convention) closely
        series = layer.oft_R["default"]
        series.neumann_terms = 40
        torch.testing.assert_close(series.matrix(), R.T, atol=1e-5, rtol=0)


def test_starts_as_the_base_and_counts_the_triangles():
    inputs = batch("llama")
    model = lt.attach(llama(), lt.OFTConfig(oft_block_size=8))
    torch.testing.assert_close(output_of(model, inputs), output_of(llama(), inputs))
    # per block 8·7/2 = 28; blocks: in 32 -> 4 (q, k, v, o, gate, up), in 64 -> 8 (down)
    assert lt.trainable_parameters(model)[0] == 2 * 28 * (6 * 4 + 8)
    shared = lt.attach(llama(), lt.OFTConfig(oft_block_size=8, block_share=True))
    assert lt.trainable_parameters(shared)[0] == 2 * 7 * 28


def test_block_size_adjustment_is_peft_s():
    for in_features in (12, 30, 32, 48, 64, 96, 100):
        for value in (1, 3, 5, 7, 8, 16, 32, 40, 128):
            assert fit_to_divisor(in_features, value) == OFTLayer.adjust_oft_parameters(None, in_features, value)
    with pytest.warns(UserWarning, match="does not divide"):
        layer = _q_proj(lt.OFTConfig(oft_block_size=5))
    assert layer.oft_R["default"].block_size == 4


def test_r_alone_means_blocks_and_both_are_refused():
    base = {"model": "m", "data": {"train": "t.csv"}, "method": "oft"}
    assert validate_config({**base, "method_args": {"r": 4}}).method_args.oft_block_size == 0
    with pytest.raises(lt.LeantuneError, match="method_args.*exactly one of r"):
        validate_config({**base, "method_args": {"r": 4, "oft_block_size": 8}})


def test_coft_keeps_each_block_within_eps():
    layer = _q_proj(lt.OFTConfig(oft_block_size=8, coft=True, eps=1e-3, init_weights=False))
    rot = layer.oft_R["default"]
    layer(torch.randn(2, 32))
    q = rot._skew(rot.weight.detach())
    assert torch.linalg.matrix_norm(q).max() <= 1e-3 / 2 + 1e-7  # eps / sqrt(4 blocks)


def test_multiplicative_dropout_sets_blocks_to_identity_in_training_only():
    layer = _q_proj(lt.OFTConfig(oft_block_size=8, module_dropout=0.5, init_weights=False))
    x = torch.randn(3, 32)
    with torch.no_grad():
        full = layer.oft_R["default"].eval()(x)
        dropped = layer.oft_R["default"].train()(x)
    same = [torch.allclose(dropped[:, i:i + 8], x[:, i:i + 8]) for i in range(0, 32, 8)]
    assert sum(same) == 2  # int(0.5 · 4) blocks are the identity
    assert not torch.allclose(full, x)


def test_gpt2_conv1d_layers_merge():
    inputs = batch("gpt2")
    model = lt.attach(gpt2(), lt.OFTConfig(oft_block_size=8, init_weights=False))
    assert sum(isinstance(m, OFTLinear) for m in model.modules()) == 8
    expected = output_of(model, inputs)
    lt.merge_adapter(model)
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_unsupported_and_old_peft_files_are_refused(tmp_path):
    model = lt.attach(llama(), lt.OFTConfig(oft_block_size=8, target_modules=["q_proj"]))
    lt.save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "oft_block_size"}))
    with pytest.raises(lt.LeantuneError, match="predates peft 0.14"):
        lt.load_adapter(llama(), tmp_path)
