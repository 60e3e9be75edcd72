"""LoRA specifics: targets, scaling, inits (standard, gaussian, PiSSA, OLoRA), bias modes, Conv1D and embeddings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from tiny_models import FACTORIES, batch, bert, gpt2, llama, output_of, randomize_

import leantune as lt
from leantune.methods.lora import LoraEmbedding, LoraLinear


def test_trainable_count_matches_the_formula_on_tiny_llama():
    model = lt.attach(llama(), lt.LoraConfig(r=4))
    # per layer: q(32->32) k(32->16) v(32->16) o(32->32) gate(32->64) up(32->64) down(64->32)
    per_layer = sum(4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)])
    assert lt.trainable_parameters(model)[0] == 2 * per_layer


def test_default_targets_skip_the_lm_head_and_all_linear_works():
    model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules="all-linear"))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == 14 and not any("lm_head" in n for n in wrapped)


def test_regex_targets():
    model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules=r".*layers\.1\.self_attn\.(q|v)_proj"))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoraLinear))
    assert wrapped == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_exclude_modules():
    model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules="all-linear", exclude_modules=["down_proj"]))
    assert not any("down_proj" in n for n, m in model.named_modules() if isinstance(m, LoraLinear))


def test_bad_targets_give_clear_errors():
    with pytest.raises(lt.LeantuneError, match="matched no module.*q_proj"):
        lt.attach(llama(), lt.LoraConfig(target_modules=["query"]))
    with pytest.raises(lt.LeantuneError, match="LlamaRMSNorm"):
        lt.attach(llama(), lt.LoraConfig(target_modules=["input_layernorm"]))
    model = llama()
    with pytest.raises(lt.LeantuneError):
        lt.attach(model, lt.LoraConfig(target_modules=["nothing"]))
    assert "_leantune" not in model.__dict__  # a failed attach leaves the model as it was


def test_rslora_and_standard_scaling():
    assert lt.LoraConfig(r=16, alpha=32).scaling == 2.0
    assert lt.LoraConfig(r=16, alpha=32, use_rslora=True).scaling == pytest.approx(32 / math.sqrt(16))


def test_config_validation():
    with pytest.raises(ValueError):
        lt.LoraConfig(r=0)
    with pytest.raises(ValueError, match="extra"):
        lt.LoraConfig(rank=8)
    with pytest.raises(ValueError):
        lt.LoraConfig(init="magic")


def test_standard_and_gaussian_init_start_as_the_base():
    inputs = batch("llama")
    base = output_of(llama(), inputs)
    for init in ("standard", "gaussian"):
        model = lt.attach(llama(), lt.LoraConfig(r=4, init=init))
        torch.testing.assert_close(output_of(model, inputs), base)
    a = lt.attach(llama(), lt.LoraConfig(r=8, init="gaussian")).model.layers[0].self_attn.q_proj.lora_A["default"]
    assert abs(a.weight.std().item() - 1 / 8) < 0.03


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_residual_inits_start_as_the_base_and_save_a_plain_lora_that_peft_loads_on_the_original_base(
        init, arch, tmp_path):
    inputs, make = batch(arch), FACTORIES[arch]
    base = output_of(make(), inputs)
    targets = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn", "c_fc"]
    model = lt.attach(make(), lt.LoraConfig(r=4, init=init, target_modules=targets))
    torch.testing.assert_close(output_of(model, inputs), base, atol=1e-5, rtol=1e-5)
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    if init == "olora":  # B: the first r columns of Q (orthonormal); A: the first r rows of R (upper triangular)
        torch.testing.assert_close(B.T @ B, torch.eye(4), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(A, torch.triu(A))
    # train a little, then save: the file is a rank-2r LoRA relative to the *original* weights
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    expected = output_of(model, inputs)
    lt.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["init_lora_weights"] is True
    ours = lt.load_adapter(make(), tmp_path)
    torch.testing.assert_close(output_of(ours, inputs), expected, atol=1e-5, rtol=1e-5)
    theirs = PeftModel.from_pretrained(make(), tmp_path)  # peft, on the original base
    torch.testing.assert_close(output_of(theirs, inputs), expected, atol=1e-5, rtol=1e-5)
    # merging the model gives the same fine-tuned weights
    torch.testing.assert_close(output_of(lt.merge(model), inputs), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_inits_match_peft_initialisation(init):
    """A, B and the residual base weight as peft's init_lora_weights="pissa" / "olora" computes them."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    ours = lt.attach(llama(), lt.LoraConfig(r=4, alpha=8, init=init, target_modules=["q_proj", "down_proj"]))
    theirs = get_peft_model(llama(), PeftLora(r=4, lora_alpha=8, init_lora_weights=init,
                                              target_modules=["q_proj", "down_proj"]))
    expected = dict(theirs.base_model.model.named_parameters())
    compared = 0
    for name, p in ours.named_parameters():
        if "lora_" in name or ".base_layer.weight" in name:
            torch.testing.assert_close(p, expected[name], atol=1e-6, rtol=1e-6, msg=name)
            compared += 1
    assert compared == 2 * 2 * 3  # 2 layers x (q_proj, down_proj) x (A, B, base weight)


def test_residual_inits_refuse_a_rank_above_the_layer():
    with pytest.raises(lt.LeantuneError, match="init 'olora' needs r <= min"):
        lt.attach(llama(), lt.LoraConfig(r=20, init="olora", target_modules=["k_proj", "q_proj"]))


@pytest.mark.parametrize("mode,expected_bias", [("none", 0), ("lora_only", 2 * (32 + 32)), ("all", None)])
def test_bias_modes(mode, expected_bias):
    model = lt.attach(bert(), lt.LoraConfig(r=2, target_modules=["query", "value"], bias=mode))
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias") and "classifier" not in n]
    size = sum(p.numel() for n, p in model.named_parameters() if n in trained)
    if expected_bias is None:
        all_biases = [n for n, _ in bert().named_parameters() if n.endswith("bias") and "classifier" not in n]
        assert len(trained) == len(all_biases)
    else:
        assert size == expected_bias


def test_gpt2_conv1d_is_detected_and_saved_as_fan_in_fan_out(tmp_path):
    import json

    model = lt.attach(gpt2(), lt.LoraConfig(r=2, target_modules=["c_attn"]))
    lt.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    with pytest.raises(lt.LeantuneError, match="fan_in_fan_out"):
        lt.attach(gpt2(), lt.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=False))


def test_embedding_lora_and_dora():
    inputs = batch("llama")
    for dora in (False, True):
        model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules=["embed_tokens"], use_dora=dora))
        assert isinstance(model.model.embed_tokens, LoraEmbedding)
        assert model.get_input_embeddings().weight.shape == (96, 32)  # attribute access reaches the base
        randomize_(p for p in model.parameters() if p.requires_grad)
        expected = output_of(model, inputs)
        torch.testing.assert_close(output_of(lt.merge(model), inputs), expected, atol=1e-4, rtol=1e-4)


def test_dora_is_a_variant_on_the_lora_layer():
    from leantune.methods.dora import DoraVariant
    from leantune.methods.lora_variant import LoraVariant

    plain = lt.attach(llama(), lt.LoraConfig(r=2, target_modules=["q_proj"])).model.layers[0].self_attn.q_proj
    assert type(plain.variants["default"]) is LoraVariant and not hasattr(plain, "lora_magnitude_vector")
    model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.variants["default"], DoraVariant)
    assert set(layer.adapter_parameters("default")) == {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}
    lt.add_adapter(model, "second", lt.LoraConfig(r=2, target_modules=["q_proj"]))  # variants are per adapter
    assert type(layer.variants["second"]) is LoraVariant and "second" not in layer.lora_magnitude_vector
    lt.delete_adapter(model, "default")
    assert list(layer.variants) == ["second"] and len(layer.lora_magnitude_vector) == 0


def test_dropout_only_in_training():
    model = lt.attach(llama(), lt.LoraConfig(r=4, dropout=0.5, init="random"))
    inputs = batch("llama")
    a, b = output_of(model, inputs), output_of(model, inputs)
    torch.testing.assert_close(a, b)  # eval: deterministic
    model.train()
    with torch.no_grad():
        c = model(input_ids=inputs["input_ids"]).logits
        d = model(input_ids=inputs["input_ids"]).logits
    assert not torch.allclose(c, d)


@pytest.mark.slow
def test_compiled_adapter_path_gives_the_same_loss_and_gradients():
    from leantune.methods.lora import compile_lora

    model = lt.attach(FACTORIES["llama"](), lt.LoraConfig(r=4, init="random")).train()
    inputs = batch("llama")

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss, grads = loss_and_grads()
    assert compile_lora(model) > 0
    loss_c, grads_c = loss_and_grads()
    assert loss_c == pytest.approx(loss, rel=1e-6)
    for g, gc in zip(grads, grads_c, strict=True):
        torch.testing.assert_close(gc, g, rtol=1e-5, atol=1e-7)
