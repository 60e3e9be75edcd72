"""IA3: vector sizes, input vs output rescaling, merge/unmerge."""

import torch
from tiny_models import batch, bert, llama, output_of, randomize_

import leantune as lt
from leantune.methods.ia3 import IA3Linear


def test_llama_defaults_and_count():
    model = lt.attach(llama(), lt.IA3Config())
    layers = {n.split(".")[-1]: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert set(layers) == {"k_proj", "v_proj", "down_proj"}
    assert layers["down_proj"].is_feedforward and not layers["k_proj"].is_feedforward
    # per layer: k out 16, v out 16, down in 64
    assert lt.trainable_parameters(model)[0] == 2 * (16 + 16 + 64)


def test_starts_as_the_base_and_scales_what_it_should():
    inputs = batch("llama")
    model = lt.attach(llama(), lt.IA3Config())
    torch.testing.assert_close(output_of(model, inputs), output_of(llama(), inputs))
    k = model.model.layers[0].self_attn.k_proj
    x = torch.randn(3, 32)
    with torch.no_grad():
        k.ia3_l["default"].fill_(2.0)
        torch.testing.assert_close(k(x), 2.0 * k.base_layer(x))
        down = model.model.layers[0].mlp.down_proj
        h = torch.randn(3, 64)
        down.ia3_l["default"].fill_(0.5)
        torch.testing.assert_close(down(h), down.base_layer(0.5 * h))


def test_bert_merge_scales_bias_too():
    inputs = batch("bert")
    model = lt.attach(bert(), lt.IA3Config())
    randomize_(p for n, p in model.named_parameters() if "ia3_l" in n)
    expected = output_of(model, inputs)
    lt.merge_adapter(model)
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-5, rtol=1e-5)
    lt.unmerge_adapter(model)
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-5, rtol=1e-5)
