"""Prefix tuning: key/value prefixes per layer (GQA-aware), projection MLP, refusal for encoders."""

import pytest
import torch
from tiny_models import batch, bert, gpt2, llama, output_of

import leantune as lt


def test_prefix_shapes_follow_grouped_query_attention():
    model = lt.attach(llama(), lt.PrefixTuningConfig(num_virtual_tokens=3))
    # 2 layers x (k, v) x 2 kv-heads x head_dim 8 = 64 values per virtual token
    assert model.prompt_encoder["default"].embedding.weight.shape == (3, 64)
    out = model(**batch("llama"))
    assert out.logits.shape == (2, 7, 96) and torch.isfinite(out.loss)


def test_projection_trains_the_mlp_and_is_folded_on_load(tmp_path):
    cfg = lt.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8)
    model = lt.attach(gpt2(), cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("transform" in n for n in names)
    inputs = batch("gpt2")
    expected = output_of(model, inputs)
    lt.save_adapter(model, tmp_path)
    loaded = lt.load_adapter(gpt2(), tmp_path)
    assert not hasattr(loaded.prompt_encoder["default"], "transform")
    torch.testing.assert_close(output_of(loaded, inputs), expected)


def test_encoders_are_refused_with_a_reason():
    with pytest.raises(lt.LeantuneError, match="decoder-only"):
        lt.attach(bert(), lt.PrefixTuningConfig())
