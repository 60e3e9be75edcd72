"""Bottleneck adapters: identity at start, Houlsby vs Pfeiffer placement, sizes, not mergeable."""

import torch
from tiny_models import batch, bert, llama, output_of

import leantune as lt
from leantune.methods.bottleneck import BottleneckLayer


def _placed(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, BottleneckLayer))


def test_houlsby_after_attention_and_ffn_pfeiffer_after_ffn():
    houlsby = _placed(lt.attach(bert(), lt.BottleneckConfig(style="houlsby")))
    pfeiffer = _placed(lt.attach(bert(), lt.BottleneckConfig(style="pfeiffer")))
    assert houlsby == sorted([f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)]
                             + [f"bert.encoder.layer.{i}.output.dense" for i in range(2)])
    assert pfeiffer == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    assert _placed(lt.attach(llama(), lt.BottleneckConfig(style="pfeiffer"))) == [
        f"model.layers.{i}.mlp.down_proj" for i in range(2)]


def test_identity_at_start_and_size():
    inputs = batch("bert")
    model = lt.attach(bert(), lt.BottleneckConfig(style="pfeiffer", bottleneck_size=4))
    torch.testing.assert_close(output_of(model, inputs), output_of(bert(), inputs))
    head = 32 * 3 + 3
    assert lt.trainable_parameters(model)[0] == 2 * (32 * 4 + 4 + 4 * 32 + 32) + head
