"""Quantized frozen base (QLoRA): storage, exact dequantised maths, LoRA on top, merge, a full run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tiny_models import batch, llama, output_of, randomize_

import leantune as lt
from leantune.errors import LeantuneError
from leantune.models.quantize import (
    QuantizedLinear,
    dequantize_int8,
    dequantize_nf4,
    is_quantized,
    quantize_int8,
    quantize_model,
    quantize_nf4,
)


def test_nf4_and_int8_round_trip_within_their_precision():
    w = torch.randn(128, 96)
    packed, absmax = quantize_nf4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2 and absmax.numel() == w.numel() // 64
    nf4 = dequantize_nf4(packed, absmax, w.shape, torch.float32)
    assert (nf4 - w).norm() / w.norm() < 0.12
    assert torch.equal(dequantize_nf4(*quantize_nf4(nf4), w.shape, torch.float32), nf4)  # levels are fixed points
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8
    assert (dequantize_int8(q, scale, torch.float32) - w).norm() / w.norm() < 0.01


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_linear_computes_with_its_dequantised_weight(kind):
    linear = torch.nn.Linear(64, 32)
    q = QuantizedLinear(linear, kind)
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = q(x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.linear(x2, q.dequantize(), linear.bias)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(p.requires_grad for p in q.parameters())


BACKENDS = ["leantune", pytest.param("bitsandbytes", marks=pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"))]


def _llama_64():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_lora_on_a_quantized_base_trains_saves_and_merges(kind, backend, tmp_path, capsys):
    # bitsandbytes' CPU inference path needs layers of at least one 64-weight block per row
    factory = llama if backend == "leantune" else _llama_64
    model = factory()
    info = quantize_model(model, kind, backend)
    assert info["layers"] == 14 and is_quantized(model)
    assert info["bytes_after"] < info["bytes_before"] * (0.2 if kind == "nf4" else 0.3)
    trainable, total = lt.trainable_parameters(model)
    assert total == sum(p.numel() for p in factory().parameters())
    assert model.lm_head.__class__ is torch.nn.Linear  # the head stays
    lt.attach(model, lt.LoraConfig(r=4, target_modules="all-linear"))
    randomize_(p for p in model.parameters() if p.requires_grad)
    model.train()
    model(**batch("llama")).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    model.eval()
    expected = output_of(model, batch("llama"))
    lt.save_adapter(model, tmp_path / "adapter")

    reloaded = factory()
    quantize_model(reloaded, kind, backend)
    lt.load_adapter(reloaded, tmp_path / "adapter")
    torch.testing.assert_close(output_of(reloaded.eval(), batch("llama")), expected)

    with pytest.raises(LeantuneError, match="quantized"):
        lt.merge_adapter(model)
    merged = lt.merge(model)
    assert "dequantised" in capsys.readouterr().err
    assert not is_quantized(merged)
    # bitsandbytes' CPU inference kernel rounds differently from its own dequantisation (~1e-3 on these logits)
    tol = {"rtol": 1e-4, "atol": 1e-5} if backend == "leantune" else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(output_of(merged, batch("llama")), expected, **tol)


def test_pissa_refuses_a_quantized_base():
    model = llama()
    quantize_model(model, "nf4")
    with pytest.raises(LeantuneError, match="quantized"):
        lt.attach(model, lt.LoraConfig(r=2, init="pissa"))


@pytest.mark.parametrize("config", [lt.LoraConfig(r=4), lt.IA3Config(), lt.BottleneckConfig()],
                         ids=["lora", "ia3", "bottleneck"])
def test_adding_an_adapter_does_not_dequantise_the_base(config, monkeypatch):
    model = llama().to(torch.bfloat16)
    quantize_model(model, "nf4")
    calls = []
    dequantize = QuantizedLinear.dequantize
    monkeypatch.setattr(QuantizedLinear, "dequantize", lambda self, dtype=None: calls.append(self) or dequantize(self, dtype))
    lt.attach(model, config)
    assert calls == []  # dtype and device were read without materialising any weight
    added = [p for n, p in model.named_parameters() if p.requires_grad and ".original_module." not in n
             and ".modules_to_save." not in n]
    assert added and all(p.dtype == torch.bfloat16 for p in added)  # the base's dtype, not its packed storage's


def test_qlora_run_end_to_end(tmp_path):
    from tiny_models import save_tiny_llama

    from leantune.config import validate_config
    from leantune.run.loader import load_run
    from leantune.train.loop import fine_tune

    rows = [{"instruction": f"What colour is item {i}?", "output": ["red", "blue"][i % 2]} for i in range(80)]
    folder = save_tiny_llama(tmp_path / "m", [r["instruction"] + " " + r["output"] for r in rows])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate_config({
        "model": folder, "task": "instruction", "quantize": "nf4", "method_args": {"r": 8},
        "task_args": {"eval_max_examples": 0}, "data": {"train": str(tmp_path / "d.jsonl")},
        "train": {"epochs": 3, "batch_size": 8, "lr": 5e-3, "max_length": 48},
        "output_dir": str(tmp_path / "run"),
    })
    result = fine_tune(cfg, quiet=True)
    assert result.after["eval_loss"] < result.before["eval_loss"]
    log = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["quantized"]["kind"] == "nf4"
    _, task, model = load_run(result.run_dir)
    assert is_quantized(model)
    evals = task.prepare()[1]
    assert task.eval_loss(model, evals, torch.device("cpu")) == pytest.approx(result.after["eval_loss"], rel=1e-5)
    with pytest.raises(LeantuneError, match="full precision"):
        validate_config({**cfg.model_dump(), "method": "full", "method_args": {}})
