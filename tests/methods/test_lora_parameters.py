"""LoRA on the experts' 3-D weights (peft's ``target_parameters``) and on fused projections: the same function as
HF peft in both directions, training, merging, exports and serving (refused, with the reason)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig as PeftLora
from peft import PeftModel, get_peft_model
from tiny_families import inputs, tiny

import leantune as lt
from leantune.errors import LeantuneError
from leantune.methods.lora_parameters import ParamLoraLayer
from leantune.models.targets import arch_targets

TOL = 1e-5
FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "phi3", "modernbert")


def logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def randomize_(params) -> None:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def adapter_params(model):
    return list(model.__dict__["_leantune"].method.adapter_tensors(model, "default").values())


def peft_config(family: str) -> PeftLora:
    """The peft config of leantune's default LoRA for ``family``: the entries naming a layer of the model (peft
    takes a Qwen3-MoE's ``gate_proj``/``up_proj``/``down_proj`` for the experts of transformers 4)."""
    model = tiny(family)
    arch = arch_targets(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    modules = [t for t in arch.lora if any(n.endswith("." + t) for n in layers)]
    task = "SEQ_CLS" if family == "modernbert" else "CAUSAL_LM"
    return PeftLora(task_type=task, r=4, lora_alpha=8, target_modules=modules,
                    target_parameters=list(arch.lora_parameters) or None)


@pytest.mark.parametrize("family", FAMILIES)
def test_leantune_adapter_loads_in_peft_with_the_same_outputs(family, tmp_path):
    batch = inputs(family)
    ours = lt.attach(tiny(family), lt.LoraConfig(r=4, alpha=8))
    randomize_(adapter_params(ours))
    expected = logits(ours, batch)
    lt.save_adapter(ours, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    if family in ("mixtral", "qwen2_moe", "qwen3_moe"):
        assert saved["target_parameters"] == ["experts.down_proj", "experts.gate_up_proj"]
    else:
        assert saved["target_parameters"] is None
    theirs = PeftModel.from_pretrained(tiny(family), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, batch), expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_adapter_loads_in_leantune_with_the_same_outputs(family, tmp_path):
    batch = inputs(family)
    theirs = get_peft_model(tiny(family), peft_config(family)).eval()
    randomize_([p for n, p in theirs.named_parameters() if "lora_" in n or "modules_to_save" in n])
    expected = logits(theirs, batch)
    theirs.save_pretrained(tmp_path)
    ours = lt.load_adapter(tiny(family), tmp_path)
    torch.testing.assert_close(logits(ours, batch), expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("family", ("phi3", "mixtral", "modernbert"))
def test_lora_trains_and_the_trained_adapter_round_trips_through_peft(family, tmp_path):
    batch = inputs(family)
    model = lt.attach(tiny(family), lt.LoraConfig(r=4))
    params = [p for p in model.parameters() if p.requires_grad]
    experts = [m for m in model.modules() if isinstance(m, ParamLoraLayer)]
    assert bool(experts) == (family == "mixtral")
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]
    for layer in experts:  # B starts at zero: the experts' LoRA learned something
        assert all(p.abs().sum() > 0 for p in layer.lora_B.parameters())
    expected = logits(model, batch)
    lt.save_adapter(model, tmp_path)
    theirs = PeftModel.from_pretrained(tiny(family), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, batch), expected, atol=TOL, rtol=TOL)
    again = lt.load_adapter(tiny(family), tmp_path)
    torch.testing.assert_close(logits(again, batch), expected, atol=TOL, rtol=TOL)


def test_merging_folds_the_delta_into_the_expert_weights():
    batch = inputs("mixtral")
    model = lt.attach(tiny("mixtral"), lt.LoraConfig(r=4, init="random"))
    base = logits(tiny("mixtral"), batch)
    expected = logits(model, batch)
    assert not torch.allclose(expected, base, atol=1e-3)
    lt.merge_adapter(model)
    torch.testing.assert_close(logits(model, batch), expected, atol=TOL, rtol=TOL)
    lt.unmerge_adapter(model)
    with lt.disable_adapters(model):
        torch.testing.assert_close(logits(model, batch), base, atol=TOL, rtol=TOL)
    lt.merge(model)
    assert not [m for m in model.modules() if type(m).__module__.startswith("leantune")]
    torch.testing.assert_close(logits(model, batch), expected, atol=TOL, rtol=TOL)


def test_adapters_share_the_expert_layer_and_leave_it_when_deleted():
    model = lt.attach(tiny("mixtral"), lt.LoraConfig(r=4, init="random"))
    lt.add_adapter(model, "other", lt.LoraConfig(r=2, init="random"))
    layer = model.model.layers[0].mlp.experts
    assert isinstance(layer, ParamLoraLayer) and set(layer.adapter_names) == {"default", "other"}
    with pytest.raises(LeantuneError, match="same parameters"):
        lt.add_adapter(model, "third", lt.LoraConfig(r=2, target_parameters=["experts.down_proj"]))
    lt.delete_adapter(model, "other")
    lt.delete_adapter(model, "default")
    assert type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"


def test_settings_lora_on_parameters_cannot_honour_are_refused_by_name():
    with pytest.raises(LeantuneError, match="dropout must be 0.*target_parameters: \\[\\]"):
        lt.attach(tiny("mixtral"), lt.LoraConfig(dropout=0.1))
    with pytest.raises(LeantuneError, match="use_dora"):
        lt.attach(tiny("mixtral"), lt.LoraConfig(use_dora=True))
    with pytest.raises(LeantuneError, match="matched no parameter.*experts.gate_up_proj"):
        lt.attach(tiny("mixtral"), lt.LoraConfig(target_parameters=["experts.nope"]))
    with pytest.raises(LeantuneError, match="select nothing"):
        lt.attach(tiny("mixtral"), lt.LoraConfig(target_modules=[], target_parameters=[]))
    model = lt.attach(tiny("mixtral"), lt.LoraConfig(dropout=0.1, target_parameters=[]))  # linear layers only
    assert not [m for m in model.modules() if isinstance(m, ParamLoraLayer)]
    only = lt.attach(tiny("mixtral"), lt.LoraConfig(target_modules=[], target_parameters=["experts.down_proj"]))
    assert [m.parameter_names for m in only.modules() if isinstance(m, ParamLoraLayer)] == [["down_proj"]] * 2


def test_loraplus_trains_the_experts_b_at_the_higher_rate():
    config = lt.LoraConfig(r=4, loraplus_lr_ratio=16)
    model = lt.attach(tiny("mixtral"), config)
    rates = model.__dict__["_leantune"].method.learning_rates(model, config, 1e-3)
    experts_b = [p for m in model.modules() if isinstance(m, ParamLoraLayer) for p in m.lora_B.parameters()]
    experts_a = [p for m in model.modules() if isinstance(m, ParamLoraLayer) for p in m.lora_A.parameters()]
    assert experts_b and all(rates[id(p)] == pytest.approx(16e-3) for p in experts_b)
    assert not [p for p in experts_a if id(p) in rates]


def test_conversion_to_lora_refuses_expert_parameters():
    model = lt.attach(tiny("mixtral"), lt.LoraConfig(r=4, init="random"))
    with pytest.raises(LeantuneError, match="expert parameters.*--to merged"):
        lt.to_lora(model, rank=4)


@pytest.fixture(scope="module")
def mixtral_run(tmp_path_factory):
    """A finished instruction run of a tiny Mixtral with the default LoRA (experts included), its adapter moved
    off its initial values."""
    import yaml
    from tiny_models import save_tiny_llama
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    from leantune.config import validate_config
    from leantune.models.loading import load_tokenizer
    from leantune.tasks import make_task

    tmp = tmp_path_factory.mktemp("moe")
    folder = save_tiny_llama(tmp / "mixtral", ["what colour is the dog ?", "the film was great"])
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)).save_pretrained(folder)
    run = tmp / "run"
    run.mkdir()
    raw = {"model": folder, "task": "instruction", "method": "lora", "method_args": {"r": 4},
           "data": {"train": "unused.jsonl"}, "output_dir": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = validate_config(raw)
    model = make_task(cfg, load_tokenizer(folder), folder).build_model(folder)
    lt.attach(model, cfg.method_args)
    randomize_(adapter_params(model))
    lt.save_adapter(model, run / "adapter")
    return run, dict(tok(["what colour is the dog ?", "the film"], padding=True, return_tensors="pt"))


def test_merged_export_holds_the_expert_delta_and_peft_export_copies_it(mixtral_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from leantune.run.loader import load_run

    run, batch = mixtral_run
    expected = logits(load_run(run)[2], batch)
    lt.export_run(run, "merged", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, batch), expected, atol=TOL, rtol=TOL)
    lt.export_run(run, "peft", tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_parameters"]


def test_vllm_lora_export_and_serving_refuse_expert_parameters_with_the_reason(mixtral_run, tmp_path):
    from leantune.serve.weights import AdapterRejected, read_config

    run, _ = mixtral_run
    with pytest.raises(LeantuneError, match="target_parameters.*--to merged"):
        lt.export_run(run, "vllm", tmp_path / "vllm")
    with pytest.raises(LeantuneError, match="expert parameters"):
        lt.export_run(run, "lora", tmp_path / "lora", rank=4)
    with pytest.raises(AdapterRejected, match="not served yet"):
        read_config(run / "adapter")
