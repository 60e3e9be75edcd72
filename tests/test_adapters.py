"""The adapter API across methods: several adapters on one base, and clear errors for adapters that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import batch, bert, gpt2, llama, output_of, randomize_

import leantune as lt
from leantune.methods.lora import LoraLinear


def _randomized(model, name):
    state = model.__dict__["_leantune"]
    randomize_(state.method.adapter_tensors(model, name).values())


def test_add_switch_disable_delete():
    inputs = batch("llama")
    base_out = output_of(llama(), inputs)
    model = lt.attach(llama(), lt.LoraConfig(r=2, init="random"), adapter_name="a")
    lt.add_adapter(model, "b", lt.LoraConfig(r=4, init="random", target_modules=["q_proj"]))
    assert lt.adapter_names(model) == ["a", "b"]
    out_a = output_of(model, inputs)
    # the new adapter is inactive and frozen until selected
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".b." in n)
    lt.set_adapter(model, "b")
    out_b = output_of(model, inputs)
    assert not torch.allclose(out_a, out_b)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".b." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".a." in n)
    with lt.disable_adapters(model):
        torch.testing.assert_close(output_of(model, inputs), base_out)
    torch.testing.assert_close(output_of(model, inputs), out_b)
    lt.delete_adapter(model, "b")
    assert lt.adapter_names(model) == ["a"]
    torch.testing.assert_close(output_of(model, inputs), out_a)
    lt.delete_adapter(model, "a")
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    torch.testing.assert_close(output_of(model, inputs), base_out)


def test_each_adapter_saves_on_its_own(tmp_path):
    inputs = batch("bert")
    model = lt.attach(bert(), lt.IA3Config(init_ia3_weights=False), adapter_name="x")
    lt.add_adapter(model, "y", lt.IA3Config(init_ia3_weights=False))
    _randomized(model, "y")
    lt.set_adapter(model, "y")
    out_y = output_of(model, inputs)
    lt.save_adapter(model, tmp_path / "y", adapter_name="y")
    lt.set_adapter(model, "x")
    out_x = output_of(model, inputs)
    lt.save_adapter(model, tmp_path / "x")
    fresh = lt.load_adapter(bert(), tmp_path / "x", adapter_name="x")
    lt.load_adapter(fresh, tmp_path / "y", adapter_name="y")
    torch.testing.assert_close(output_of(fresh, inputs), out_y)  # loading makes the adapter active
    lt.set_adapter(fresh, "x")
    torch.testing.assert_close(output_of(fresh, inputs), out_x)


def test_head_copies_follow_the_active_adapter():
    inputs = batch("bert")
    model = lt.attach(bert(), lt.HeadOnlyConfig(), adapter_name="a")
    lt.add_adapter(model, "b", lt.HeadOnlyConfig())
    with torch.no_grad():
        model.classifier.modules_to_save["b"].weight.add_(1.0)
    out_a = output_of(model, inputs)
    lt.set_adapter(model, "b")
    assert not torch.allclose(out_a, output_of(model, inputs))


def test_api_misuse_errors():
    model = lt.attach(llama(), lt.LoraConfig(r=2))
    with pytest.raises(lt.LeantuneError, match="add_adapter"):
        lt.attach(model, lt.LoraConfig())
    with pytest.raises(lt.LeantuneError, match="already exists"):
        lt.add_adapter(model, "default", lt.LoraConfig())
    with pytest.raises(lt.LeantuneError, match="cannot be added"):
        lt.add_adapter(model, "other", lt.IA3Config())
    with pytest.raises(lt.LeantuneError, match="No adapter named"):
        lt.set_adapter(model, "nope")
    with pytest.raises(lt.LeantuneError, match="attach"):
        lt.save_adapter(llama(), "/tmp/never")
    full = lt.attach(llama(), lt.FullConfig())
    with pytest.raises(lt.LeantuneError, match="one adapter"):
        lt.add_adapter(full, "second", lt.FullConfig())
    with pytest.raises(lt.LeantuneError, match="cannot be disabled"):
        with lt.disable_adapters(full):
            pass


def test_mismatched_adapters_are_rejected(tmp_path):
    model = lt.attach(llama(), lt.LoraConfig(r=2, target_modules=["q_proj"]))
    lt.save_adapter(model, tmp_path / "llama")
    # another architecture: the targets do not exist there
    with pytest.raises(lt.LeantuneError, match="matched no module"):
        lt.load_adapter(bert(), tmp_path / "llama")
    # same architecture, other sizes
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(lt.AdapterMismatchError, match="shape mismatch"):
        lt.load_adapter(wider, tmp_path / "llama")
    assert "_leantune" not in wider.__dict__  # nothing half-attached after a failed load
    # unknown keys in the file
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "llama" / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(2, 32)
    save_file(tensors, tmp_path / "llama" / "adapter_model.safetensors")
    with pytest.raises(lt.AdapterMismatchError, match="match nothing"):
        lt.load_adapter(llama(), tmp_path / "llama")


def test_bad_adapter_folders(tmp_path):
    with pytest.raises(lt.LeantuneError, match="not found"):
        lt.load_adapter(llama(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(lt.LeantuneError, match="no adapter_config.json"):
        lt.load_adapter(llama(), tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(lt.LeantuneError, match="invalid JSON at line 1"):
        lt.load_adapter(llama(), bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
    with pytest.raises(lt.LeantuneError, match="LOHA.*not supported"):
        lt.load_adapter(llama(), bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}))
    with pytest.raises(lt.LeantuneError, match="no adapter_model.safetensors"):
        lt.load_adapter(llama(), bad)
    (bad / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(lt.LeantuneError, match="not a readable safetensors"):
        lt.load_adapter(llama(), bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "layer_replication": [[0, 1]]}))
    with pytest.raises(lt.LeantuneError, match="layer_replication"):
        lt.load_adapter(llama(), bad)


def test_saved_config_is_peft_shaped(tmp_path):
    model = lt.attach(gpt2(), lt.LoraConfig(r=4, alpha=8, use_rslora=True))
    lt.save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["use_rslora"] is True
    assert sorted(cfg["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_trainable_parameters_counts_tied_weights_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, tie_word_embeddings=True))
    _, total = lt.trainable_parameters(tied)
    assert total == sum(p.numel() for p in tied.parameters())  # parameters() already de-duplicates
    assert lt.trainable_parameters(lt.attach(tied, lt.LoraConfig(r=2)))[0] > 0
