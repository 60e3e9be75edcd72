"""to_lora: weight-update adapters (DoRA, LoKr, OFT, VeRA, IA3, full fine-tuning) as plain LoRA, exact at full
rank in leantune and in HF peft, with errors that shrink with the rank."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from tiny_models import FACTORIES, batch, output_of, randomize_

import leantune as lt

# (case id, model, adapter config, a rank at least every layer's delta rank)
CASES = [
    ("dora-llama", "llama", lt.LoraConfig(r=4, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"]), 32),
    ("lokr-llama", "llama", lt.LoKrConfig(r=2), 32),
    ("lokr-bert-head", "bert", lt.LoKrConfig(r=2), 32),
    ("lokr-gpt2-conv1d", "gpt2", lt.LoKrConfig(r=2), 32),
    ("oft-gpt2-conv1d", "gpt2", lt.OFTConfig(oft_block_size=8), 32),
    ("vera-t5", "t5", lt.VeraConfig(r=16), 32),
    ("ia3-llama", "llama", lt.IA3Config(), 32),
    ("ia3-bert-biases", "bert", lt.IA3Config(), 32),
    ("lora-bert-all-biases", "bert", lt.LoraConfig(r=4, bias="all", target_modules=["query", "value"]), 4),
    ("lora-embedding-llama", "llama", lt.LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]), 4),
]


def _with_biases(arch):
    """The tiny model with non-zero biases (transformers starts them at 0, which would hide bias updates)."""
    model = FACTORIES[arch]()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _trained(arch, config):
    model = lt.attach(_with_biases(arch), config.model_copy())
    state = model.__dict__["_leantune"]
    randomize_(state.method.adapter_tensors(model, "default").values())
    return model


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_full_rank_conversion_reproduces_the_model_in_leantune_and_peft(case, tmp_path):
    _, arch, config, rank = case
    inputs = batch(arch)
    model = _trained(arch, config)
    expected = output_of(model, inputs)

    report = lt.to_lora(model, rank=rank, out_dir=tmp_path)
    assert report.relative_error < 1e-5 and all(c.delta_rank <= rank for c in report.layers)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    torch.testing.assert_close(output_of(model, inputs), expected)  # the source model is left as it was

    ours = lt.load_adapter(_with_biases(arch), tmp_path)
    torch.testing.assert_close(output_of(ours, inputs), expected, atol=1e-4, rtol=1e-4)
    theirs = PeftModel.from_pretrained(_with_biases(arch), tmp_path).eval()
    torch.testing.assert_close(output_of(theirs, inputs), expected, atol=1e-4, rtol=1e-4)


def test_what_is_kept_and_which_biases_are_saved():
    bert_ia3 = lt.to_lora(_trained("bert", lt.IA3Config()), rank=8)
    assert bert_ia3.method == "ia3" and bert_ia3.modules_to_save == ["classifier"]
    assert bert_ia3.bias == "lora_only"  # IA3 rescales the key/value biases too
    assert "base_model.model.classifier.weight" in bert_ia3.tensors
    assert lt.to_lora(_trained("llama", lt.LoKrConfig(r=2)), rank=8).bias == "none"
    dora = lt.to_lora(_trained("llama", CASES[0][2]), rank=2)
    assert dora.method == "dora" and dora.config["r"] == 2 and dora.config["lora_alpha"] == 2


def test_low_rank_errors_are_reported_and_shrink_with_the_rank():
    model = _trained("llama", lt.OFTConfig(oft_block_size=8))  # OFT's update has full rank
    errors = [lt.to_lora(model, rank=r).relative_error for r in (1, 4, 16, 32)]
    assert errors[0] > errors[1] > errors[2] > 0.01 and errors[3] < 1e-5
    report = lt.to_lora(model, rank=4)
    assert len(report.layers) == 14 and all(0 < c.relative_error < 1 for c in report.layers)
    worst = max(report.layers, key=lambda c: c.relative_error)
    assert worst.name in report.summary() and "rank 4" in report.summary()


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2", "t5"])
def test_full_fine_tuning_converts_against_the_base(arch, tmp_path):
    inputs = batch(arch)
    base, tuned = FACTORIES[arch](), lt.attach(FACTORIES[arch](), lt.FullConfig())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    expected = output_of(tuned, inputs)
    with pytest.raises(lt.LeantuneError, match="needs the original model"):
        lt.to_lora(tuned, rank=8)

    report = lt.to_lora(tuned, rank=96, out_dir=tmp_path, base=base)
    assert report.method == "full" and report.relative_error < 1e-5
    assert report.modules_to_save  # the changed norms (and tied embeddings) are kept in full
    torch.testing.assert_close(output_of(lt.load_adapter(FACTORIES[arch](), tmp_path), inputs), expected,
                               atol=1e-4, rtol=1e-4)
    theirs = PeftModel.from_pretrained(FACTORIES[arch](), tmp_path).eval()
    torch.testing.assert_close(output_of(theirs, inputs), expected, atol=1e-4, rtol=1e-4)


def test_a_full_fine_tuning_run_folder_converts_with_its_own_base(tmp_path):
    from tiny_models import save_tiny_bert, sentiment_rows, write_csv

    from leantune.config import validate_config
    from leantune.models.registry import resolve_model
    from leantune.run.loader import load_run
    from leantune.train.loop import fine_tune

    model_dir = save_tiny_bert(tmp_path / "bert", pooling="mean")
    result = fine_tune(validate_config({
        "model": model_dir, "method": "full",
        "data": {"train": write_csv(tmp_path / "train.csv", sentiment_rows(64)), "eval_fraction": 0.25},
        "train": {"max_steps": 6, "batch_size": 16, "lr": 1e-3, "max_length": 32, "eval_before": False},
        "output_dir": str(tmp_path / "run"),
    }), quiet=True)
    report = lt.to_lora(result.run_dir, rank=64, out_dir=tmp_path / "lora")
    assert report.method == "full" and report.relative_error < 1e-5 and "classifier" in report.modules_to_save

    _, task, tuned = load_run(result.run_dir)
    converted = lt.load_adapter(task.build_model(resolve_model(model_dir)).eval(), tmp_path / "lora")
    inputs = {"input_ids": torch.tensor([[2, 10, 30, 3], [2, 11, 31, 3]]), "attention_mask": torch.ones(2, 4).long()}
    with torch.no_grad():
        torch.testing.assert_close(converted(**inputs).logits, tuned(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_what_cannot_be_converted_says_why():
    prompt = lt.attach(FACTORIES["llama"](), lt.PromptTuningConfig(num_virtual_tokens=4))
    with pytest.raises(lt.LeantuneError, match="prompt is not one"):
        lt.to_lora(prompt, rank=4)
    pissa = lt.attach(FACTORIES["llama"](), lt.LoraConfig(r=2, init="pissa"))
    with pytest.raises(lt.LeantuneError, match="init=pissa"):
        lt.to_lora(pissa, rank=4)
    with pytest.raises(lt.LeantuneError, match="rank must be a positive integer"):
        lt.to_lora(pissa, rank=0)
    merged = lt.attach(FACTORIES["llama"](), lt.LoKrConfig(r=2))
    lt.merge_adapter(merged)
    with pytest.raises(lt.LeantuneError, match="unmerge_adapter"):
        lt.to_lora(merged, rank=4)
