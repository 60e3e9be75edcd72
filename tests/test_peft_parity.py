"""The oracle: HF peft computes the same function as leantune for the same adapter files, in both directions."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config as PeftIA3
from peft import LoraConfig as PeftLora
from peft import PeftModel, get_peft_model
from peft import PrefixTuningConfig as PeftPrefix
from peft import PromptTuningConfig as PeftPrompt
from tiny_models import FACTORIES, batch, output_of, randomize_

import leantune as lt

TOL = 1e-5

# (case id, model, leantune config, equivalent peft config)
CASES = [
    ("lora-llama", "llama", lt.LoraConfig(r=4, alpha=8, init="random"),
     PeftLora(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    ("lora-embedding-llama", "llama", lt.LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"], init="random"),
     PeftLora(r=4, lora_alpha=16, target_modules=["embed_tokens", "q_proj"])),
    ("rslora-llama", "llama", lt.LoraConfig(r=4, alpha=8, use_rslora=True, init="random"),
     PeftLora(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("dora-llama", "llama", lt.LoraConfig(r=4, alpha=8, use_dora=True, init="random", target_modules=["q_proj", "v_proj", "up_proj"]),
     PeftLora(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"])),
    ("lora-gpt2-conv1d", "gpt2", lt.LoraConfig(r=4, init="random"),
     PeftLora(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    ("dora-gpt2-conv1d", "gpt2", lt.LoraConfig(r=4, use_dora=True, init="random", target_modules=["c_attn"]),
     PeftLora(r=4, lora_alpha=16, use_dora=True, target_modules=["c_attn"], fan_in_fan_out=True)),
    ("lora-bert-head", "bert", lt.LoraConfig(r=4, init="random", target_modules=["query", "value"], bias="lora_only"),
     PeftLora(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=["query", "value"], bias="lora_only")),
    ("lora-t5", "t5", lt.LoraConfig(r=4, init="random", target_modules=["q", "v", "wo"]),
     PeftLora(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=16, target_modules=["q", "v", "wo"])),
    ("ia3-llama", "llama", lt.IA3Config(init_ia3_weights=False), PeftIA3(task_type="CAUSAL_LM")),
    ("ia3-gpt2", "gpt2", lt.IA3Config(init_ia3_weights=False), PeftIA3(task_type="CAUSAL_LM", fan_in_fan_out=True)),
    ("ia3-bert", "bert", lt.IA3Config(init_ia3_weights=False), PeftIA3(task_type="SEQ_CLS")),
    ("ia3-t5", "t5", lt.IA3Config(init_ia3_weights=False), PeftIA3(task_type="SEQ_2_SEQ_LM")),
    ("lora-llama-score-head", "llama_cls", lt.LoraConfig(r=4, init="random", target_modules=["q_proj", "v_proj"]),
     PeftLora(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    ("prompt-llama", "llama", lt.PromptTuningConfig(num_virtual_tokens=4, init="random"),
     PeftPrompt(task_type="CAUSAL_LM", num_virtual_tokens=4)),
    ("prompt-bert", "bert", lt.PromptTuningConfig(num_virtual_tokens=4, init="random"),
     PeftPrompt(task_type="SEQ_CLS", num_virtual_tokens=4)),
    ("prompt-t5", "t5", lt.PromptTuningConfig(num_virtual_tokens=4, init="random"),
     PeftPrompt(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)),
    ("prefix-llama", "llama", lt.PrefixTuningConfig(num_virtual_tokens=4),
     PeftPrefix(task_type="CAUSAL_LM", num_virtual_tokens=4)),
    ("prefix-projection-llama", "llama", lt.PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16),
     PeftPrefix(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16)),
    ("prefix-gpt2", "gpt2", lt.PrefixTuningConfig(num_virtual_tokens=4),
     PeftPrefix(task_type="CAUSAL_LM", num_virtual_tokens=4)),
]


def _peft_adapter_params(model):
    keys = ("lora_", "ia3_", "prompt_encoder", "modules_to_save")
    return [p for n, p in model.named_parameters() if any(k in n for k in keys)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_leantune_adapter_loads_in_peft(case, tmp_path):
    _, arch, ours_cfg, _ = case
    inputs = batch(arch)
    ours = lt.attach(FACTORIES[arch](), ours_cfg.model_copy())
    state = ours.__dict__["_leantune"]
    randomize_(state.method.adapter_tensors(ours, "default").values())
    expected = output_of(ours, inputs)
    lt.save_adapter(ours, tmp_path)

    theirs = PeftModel.from_pretrained(FACTORIES[arch](), tmp_path).eval()
    got = output_of(theirs, inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_peft_adapter_loads_in_leantune(case, tmp_path):
    _, arch, _, peft_cfg = case
    inputs = batch(arch)
    theirs = get_peft_model(FACTORIES[arch](), peft_cfg).eval()
    randomize_(_peft_adapter_params(theirs))
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(tmp_path)

    ours = lt.load_adapter(FACTORIES[arch](), tmp_path)
    got = output_of(ours, inputs)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
