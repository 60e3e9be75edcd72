"""LoRA+: the optimizer's groups as peft's create_loraplus_optimizer makes them, only B (and 1-D parameters) at
lr x ratio in a run, groups kept by checkpoints and resume, nothing of it in adapter_config.json."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import bert, save_tiny_bert, sentiment_rows, write_csv

import leantune as lt
from leantune.config import validate_config
from leantune.methods.registry import method_for_config
from leantune.train.loop import fine_tune
from leantune.train.optim import build_optimizer

LR, RATIO = 1e-3, 16.0


def _lr_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n.removeprefix(prefix).replace("lora_magnitude_vector.default.weight", "lora_magnitude_vector.default"):
            by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}  # peft's DoRA m: a module's weight


@pytest.mark.parametrize("use_dora", [False, True])
def test_groups_are_peft_create_loraplus_optimizer_groups(use_dora):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    targets = ["query", "value", "word_embeddings"]
    cfg = lt.LoraConfig(r=2, target_modules=targets, use_dora=use_dora, loraplus_lr_ratio=RATIO,
                        loraplus_lr_embedding=1e-5)
    ours = lt.attach(bert(), cfg)
    optimizer = build_optimizer(ours, LR, 0.01, method_for_config(cfg).learning_rates(ours, cfg, LR))
    theirs = get_peft_model(bert(), PeftLora(r=2, target_modules=targets, use_dora=use_dora, task_type="SEQ_CLS"))
    expected = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                         loraplus_lr_embedding=1e-5)
    assert _lr_by_name(ours, optimizer) == _lr_by_name(theirs, expected, prefix="base_model.model.")
    # our weight-decay rule is kept: 2-D parameters decay, 1-D ones do not
    for group in optimizer.param_groups:
        assert group["weight_decay"] == (0.01 if group["params"][0].dim() >= 2 else 0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loraplus")
    return save_tiny_bert(tmp / "m", pooling="mean"), write_csv(tmp / "train.csv", sentiment_rows(300)), tmp


def _raw(data, out: str, **method_args) -> dict:
    model, train, tmp = data
    return {
        "model": model, "method": "lora", "method_args": {"r": 4, "alpha": 8, "dropout": 0.1, **method_args},
        "data": {"train": train, "eval_fraction": 0.2},
        "train": {"max_steps": 10, "batch_size": 8, "lr": LR, "max_length": 32, "log_every": 1, "save_every": 5,
                  "keep_last": 5, "eval_before": False, "num_threads": 1, "seed": 3},
        "output_dir": str(tmp / out),
    }


def test_a_run_changes_only_b_s_learning_rate(data):
    from leantune.train.setup import setup_run

    plain = setup_run(validate_config(_raw(data, "plain")), quiet=True)
    plus = setup_run(validate_config(_raw(data, "plus", loraplus_lr_ratio=RATIO)), quiet=True)
    before, after = _lr_by_name(plain.unwrapped, plain.optimizer), _lr_by_name(plus.unwrapped, plus.optimizer)
    assert before.keys() == after.keys() and set(before.values()) == {LR}
    changed = {n for n in after if after[n] != before[n]}
    assert changed and all(after[n] == LR * RATIO for n in changed)
    # B matrices, and as in peft every 1-D parameter (here the head's bias); A and the head's weight keep lr
    assert changed == {n for n in after if ".lora_B." in n or n.endswith("classifier.modules_to_save.default.bias")}
    assert any(".lora_A." in n for n in after) and any(n.endswith("default.weight") and "classifier" in n
                                                         for n in after if n not in changed)


def test_checkpoints_and_resume_keep_the_groups(data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    raw = _raw(data, "resume", loraplus_lr_ratio=RATIO)
    first = fine_tune(validate_config(raw), quiet=True)
    shutil.copytree(first.run_dir / "adapter", tmp_path / "reference")
    saved = torch.load(first.run_dir / "checkpoints" / "step-0000005" / "optimizer-rank0.pt", weights_only=False)
    assert {g["initial_lr"] for g in saved["optimizer"]["param_groups"]} == {LR, LR * RATIO}
    step10 = first.run_dir / "checkpoints" / "step-0000010" / "trainable.safetensors"
    step10.write_bytes(step10.read_bytes()[:-100])  # steps 6-10 run again from step 5's checkpoint
    resumed = fine_tune(validate_config(raw), quiet=True, resume=True)
    ref, new = load_file(str(tmp_path / "reference" / "adapter_model.safetensors")), \
        load_file(str(resumed.run_dir / "adapter" / "adapter_model.safetensors"))
    assert ref.keys() == new.keys()
    for k in ref:
        torch.testing.assert_close(new[k], ref[k], rtol=0, atol=1e-6, msg=k)
    # the ratio is part of what the checkpoint trained: resuming with another one is refused
    with pytest.raises(lt.LeantuneError, match="method_args"):
        fine_tune(validate_config(_raw(data, "resume", loraplus_lr_ratio=4.0)), quiet=True, resume=True)
    # a training setting, not an adapter field: peft reads the adapter_config.json as it is
    adapter_cfg = json.loads((resumed.run_dir / "adapter" / "adapter_config.json").read_text())
    assert not any("loraplus" in k for k in adapter_cfg)
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(resumed.run_dir / "adapter").r == 4


def test_loraplus_settings_are_validated():
    base = {"model": "m", "data": {"train": "t.csv"}}
    assert validate_config({**base, "method": "dora", "method_args": {"loraplus_lr_ratio": 16}})
    with pytest.raises(lt.LeantuneError, match="unknown key 'method_args.loraplus_lr_ratio'"):
        validate_config({**base, "method": "ia3", "method_args": {"loraplus_lr_ratio": 16}})
    with pytest.raises(lt.LeantuneError, match="set loraplus_lr_ratio too"):
        validate_config({**base, "method_args": {"loraplus_lr_embedding": 1e-5}})
    with pytest.raises(lt.LeantuneError, match="loraplus_lr_ratio"):
        validate_config({**base, "method_args": {"loraplus_lr_ratio": 0}})
