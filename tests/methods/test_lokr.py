"""LoKr: peft parity both ways, the factor shapes and decomposition rules, inits, dropouts, refusals, a real run.

(The contract every method keeps — gradients, counts, training, save/load, merge — runs in test_every_method.)"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoKrConfig as PeftLoKr
from peft.tuners.lokr.layer import factorization as peft_factorization
from peft_oracle import parity_tests
from tiny_models import batch, gpt2, llama, output_of, save_tiny_bert, sentiment_rows, write_csv

import leantune as lt
from leantune.methods.lokr import LoKrLinear, factorization

TOL = 1e-5
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (case id, model, leantune config, the same adapter as peft builds it)
CASES = [
    ("llama-w2-decomposed", "llama", lt.LoKrConfig(r=2, alpha=4), PeftLoKr(r=2, alpha=4, target_modules=LLAMA_ALL)),
    ("llama-full-factors", "llama", lt.LoKrConfig(r=8, alpha=16, target_modules=["q_proj", "down_proj"]),
     PeftLoKr(r=8, alpha=16, target_modules=["q_proj", "down_proj"])),
    ("llama-lycoris-init", "llama", lt.LoKrConfig(r=2, init_weights="lycoris"),
     PeftLoKr(r=2, init_weights="lycoris", target_modules=LLAMA_ALL)),
    ("bert-decompose-both-head", "bert", lt.LoKrConfig(r=1, decompose_both=True, target_modules=["query", "value"]),
     PeftLoKr(task_type="SEQ_CLS", r=1, decompose_both=True, target_modules=["query", "value"])),
    ("t5-decompose-factor", "t5", lt.LoKrConfig(r=2, decompose_factor=4, target_modules=["q", "v", "wo"]),
     PeftLoKr(task_type="SEQ_2_SEQ_LM", r=2, decompose_factor=4, target_modules=["q", "v", "wo"])),
]


test_leantune_lokr_loads_in_peft, test_peft_lokr_loads_in_leantune = parity_tests(CASES)


def test_factorization_is_peft_s():
    for dim in (1, 2, 7, 12, 32, 64, 96, 127, 128, 256, 384, 768, 1000, 3072):
        for factor in (-1, 1, 2, 3, 4, 8, 16):
            assert factorization(dim, factor) == peft_factorization(dim, factor), (dim, factor)


def test_factor_shapes_follow_r():
    q = lambda cfg: lt.attach(llama(), cfg).model.layers[0].self_attn.q_proj  # noqa: E731  (32 x 32 = (4·8) x (4·8))
    small = q(lt.LoKrConfig(r=2))  # 2 < 8/2: w2 decomposed; w1 full
    assert set(small.adapter_parameters("default")) == {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}
    assert small.lokr_w1["default"].shape == (4, 4) and small.lokr_w2_a["default"].shape == (8, 2)
    assert set(q(lt.LoKrConfig(r=4)).adapter_parameters("default")) == {"lokr_w1", "lokr_w2"}
    both = q(lt.LoKrConfig(r=1, decompose_both=True))  # 1 < 4/2: w1 decomposed too
    assert set(both.adapter_parameters("default")) == {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}


@pytest.mark.parametrize("init", [True, "lycoris"])
def test_starts_as_the_base(init):
    inputs = batch("llama")
    model = lt.attach(llama(), lt.LoKrConfig(r=2, init_weights=init))
    torch.testing.assert_close(output_of(model, inputs), output_of(llama(), inputs))


def test_delta_is_the_scaled_kronecker_product():
    model = lt.attach(llama(), lt.LoKrConfig(r=8, alpha=4, init_weights=False, target_modules=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    w1, w2 = layer.lokr_w1["default"], layer.lokr_w2["default"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ (0.5 * torch.kron(w1, w2)).T)


def test_gpt2_conv1d_layers_train_and_merge():
    """peft's LoKr has no Conv1D layer; leantune's works on GPT-2 (to_lora makes it loadable by peft)."""
    inputs = batch("gpt2")
    model = lt.attach(gpt2(), lt.LoKrConfig(r=2, init_weights=False))
    assert sum(isinstance(m, LoKrLinear) for m in model.modules()) == 8  # 4 Conv1D per block
    expected = output_of(model, inputs)
    lt.merge_adapter(model)
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_module_and_rank_dropout_act_in_training_only():
    x = torch.randn(4, 32)
    model = lt.attach(llama(), lt.LoKrConfig(r=8, init_weights=False, module_dropout=0.999999,
                                             target_modules=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        assert torch.equal(layer.train()(x), layer.base_layer(x))  # the whole update dropped
        assert not torch.allclose(layer.eval()(x), layer.base_layer(x))

    model = lt.attach(llama(), lt.LoKrConfig(r=8, init_weights=False, rank_dropout=0.5, rank_dropout_scale=True,
                                             target_modules=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        torch.manual_seed(0)
        trained = layer.train()(x) - layer.base_layer(x)
        full = layer.eval()(x) - layer.base_layer(x)
    dropped = (trained == 0).all(dim=0)  # whole output rows of ΔW dropped
    assert 0 < int(dropped.sum()) < 32
    kept = ~dropped
    scale = (trained[:, kept] / full[:, kept]).mean()  # kept rows rescaled by 1 / fraction kept
    torch.testing.assert_close(scale, torch.tensor(32 / int(kept.sum())), atol=1e-4, rtol=1e-4)


def test_bad_settings_are_refused():
    from leantune.config import validate_config

    with pytest.raises(lt.LeantuneError, match="'method_args.decompose_factor'.*-1"):
        validate_config({"model": "m", "data": {"train": "t.csv"}, "method": "lokr",
                         "method_args": {"decompose_factor": 0}})


def test_a_lokr_run_trains_end_to_end_loads_in_peft_and_converts_to_lora(tmp_path):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    from leantune.config import validate_config
    from leantune.run.loader import load_run
    from leantune.train.loop import fine_tune

    model_dir = save_tiny_bert(tmp_path / "bert", pooling="mean")
    cfg = validate_config({
        "model": model_dir, "method": "lokr", "method_args": {"r": 4, "alpha": 8},
        "data": {"train": write_csv(tmp_path / "train.csv", sentiment_rows(200)), "eval_fraction": 0.25},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "max_length": 32, "log_every": 5},
        "output_dir": str(tmp_path / "run"),
    })
    result = fine_tune(cfg, quiet=True)
    assert result.after["accuracy"] > result.before["accuracy"]
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LOKR" and adapter["modules_to_save"] == ["classifier"]

    _, _, ours = load_run(result.run_dir)
    assert any(isinstance(m, LoKrLinear) for m in ours.modules())
    inputs = {"input_ids": torch.tensor([[2, 10, 30, 3], [2, 11, 31, 3]]), "attention_mask": torch.ones(2, 4).long()}
    # peft loads it on the same encoder (as BertForSequenceClassification: same module paths) with the same states
    theirs = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(model_dir, num_labels=2),
                                       result.run_dir / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.base_model.model.bert(**inputs).last_hidden_state,
                                   ours.bert(**inputs).last_hidden_state, atol=TOL, rtol=TOL)
        expected = ours(**inputs).logits

    # the run converts to a LoRA (full rank here: the delta is exact) that gives the same predictions
    report = lt.to_lora(result.run_dir, rank=32, out_dir=tmp_path / "lora")
    assert report.method == "lokr" and report.relative_error < 1e-5 and report.modules_to_save == ["classifier"]
    _, _, converted = load_run(result.run_dir)
    lt.delete_adapter(converted, "default")
    lt.load_adapter(converted, tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(converted(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
