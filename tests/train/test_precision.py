"""The precision policy: a bf16 checkpoint trains fp32 adapters and optimizer state, with the base in the compute
dtype; fp16 steps through a loss scaler (overflows skipped, not failures; its scale in checkpoints); the choice of
precision per device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_bert, save_tiny_llama, sentiment_rows, write_csv

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.system import device as device_mod
from leantune.system.device import autocast_dtype, base_dtype, pick_device, resolve_precision
from leantune.train import loop, setup
from leantune.train.checkpoints import LoopState
from leantune.train.loop import apply_gradients, finish, fit
from leantune.train.setup import setup_run

ROWS = [{"instruction": f"What colour is item {i}?", "input": "", "output": ["red", "blue"][i % 2]} for i in range(24)]
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def _to_bf16(folder: str) -> str:
    """Rewrite a saved model's weights and config as a bf16 checkpoint."""
    path = Path(folder)
    weights = path / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(weights).items()},
              weights, metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def llama_bf16(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("llama") / "m", [r["instruction"] + " " + r["output"]
                                                                         for r in ROWS])
    return _to_bf16(folder)


def _instruction_cfg(tmp_path, model, **train):
    (tmp_path / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return validate_config({
        "model": model, "task": "instruction", "method": "lora", "method_args": {"r": 4},
        "task_args": {"eval_max_examples": 4, "max_new_tokens": 2},
        "data": {"train": str(tmp_path / "inst.jsonl"), "format": "alpaca", "eval_fraction": 0.2},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 32, "eval_before": False, **train},
        "output_dir": str(tmp_path / "run"),
    })


def _dtypes(run):
    model = run.unwrapped
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in model.named_parameters()  # (a new head's frozen original may stay fp32)
              if not p.requires_grad and "original_module" not in n}
    states = {v.dtype for s in run.optimizer.state.values() for v in s.values()
              if isinstance(v, torch.Tensor) and v.dim() > 0}
    return trainable, frozen, states


@pytest.mark.parametrize(("precision", "base"), [("auto", torch.float32), ("bf16", torch.bfloat16)])
def test_a_bf16_checkpoint_trains_fp32_adapters_and_optimizer_state(tmp_path, llama_bf16, precision, base):
    run = setup_run(_instruction_cfg(tmp_path, llama_bf16, precision=precision), quiet=True)
    fit(run)
    trainable, frozen, states = _dtypes(run)
    assert run.state.step == 3 and run.state.nonfinite_steps == 0
    assert trainable == {torch.float32} and states == {torch.float32}
    assert frozen == {base}  # CPU: fp32 compute, the checkpoint upcast; bf16: the base stays in bf16
    result = finish(run, 0.0)  # evaluation under the run's autocast, the adapter saved
    assert result.steps == 3
    saved = load_file(str(run.run_dir / "adapter" / "adapter_model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}


@pytest.mark.parametrize(("method", "base"), [
    ("lora", {torch.bfloat16}),
    ("bitfit", {torch.bfloat16, torch.float32}),  # a layer with a trained bias is fp32 whole (norms need one dtype)
])
def test_trained_heads_and_biases_are_fp32_beside_a_bf16_base(tmp_path, method, base):
    model = _to_bf16(save_tiny_bert(tmp_path / "bert", pooling="mean"))
    cfg = validate_config({
        "model": model, "method": method,
        "data": {"train": write_csv(tmp_path / "train.csv", sentiment_rows(40)), "eval_fraction": 0.25},
        "train": {"max_steps": 2, "batch_size": 8, "max_length": 16, "precision": "bf16"},
        "output_dir": str(tmp_path / "run")})
    run = setup_run(cfg, quiet=True)
    fit(run)
    trainable, frozen, states = _dtypes(run)
    assert trainable == {torch.float32} and states == {torch.float32} and frozen == base
    assert "accuracy" in finish(run, 0.0).after


# ------------------------------------------------------------------------------------------------- fp16
class RecordingScaler:
    """A loss scaler that records what the step does with it; ``enabled`` as GradScaler's."""

    def __init__(self, calls: list[str], enabled: bool = True) -> None:
        self.calls, self.enabled = calls, enabled

    def is_enabled(self) -> bool:
        return self.enabled

    def unscale_(self, optimizer) -> None:
        self.calls.append("unscale_")

    def step(self, optimizer) -> None:
        self.calls.append("step")
        optimizer.step()

    def update(self) -> None:
        self.calls.append("update")


def _one_param_step(monkeypatch, grad: float, loss: float = 1.0, enabled: bool = True):
    calls: list[str] = []
    real_clip = loop.clip_gradients

    def clip(params, max_norm):
        calls.append("clip")
        return real_clip(params, max_norm)

    monkeypatch.setattr(loop, "clip_gradients", clip)
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.full((3,), grad)
    optimizer = torch.optim.SGD([w], lr=0.1)
    outcome, _ = apply_gradients(optimizer, RecordingScaler(calls, enabled), [w], 1.0, loss)
    return outcome, calls, w


def test_the_fp16_step_unscales_before_clipping_and_steps_through_the_scaler(monkeypatch):
    outcome, calls, w = _one_param_step(monkeypatch, grad=0.5)
    assert outcome == "step" and calls == ["unscale_", "clip", "step", "update"]
    assert (w.detach() < 1).all() and w.grad is None


def test_an_fp16_overflow_skips_the_update_without_counting_it_as_a_failure(monkeypatch):
    outcome, calls, w = _one_param_step(monkeypatch, grad=float("inf"))
    assert outcome == "overflow" and calls == ["unscale_", "clip", "update"]  # the scaler lowers its scale
    assert (w.detach() == 1).all() and w.grad is None
    outcome, calls, _ = _one_param_step(monkeypatch, grad=0.5, loss=float("nan"))
    assert outcome == "nonfinite" and "step" not in calls
    outcome, _, _ = _one_param_step(monkeypatch, grad=float("inf"), enabled=False)  # no scaler: a failure
    assert outcome == "nonfinite"


def test_fp16_trains_through_the_loss_scaler_and_resumes_with_its_scale(tmp_path, llama_bf16, monkeypatch):
    # a scale far too large: the first steps overflow and the scaler halves it until they fit
    monkeypatch.setattr(setup, "grad_scaler", lambda precision, device, strategy="none": torch.amp.GradScaler(
        "cpu", init_scale=2.0**40, enabled=precision == "fp16"))
    cfg = _instruction_cfg(tmp_path, llama_bf16, precision="fp16", max_steps=3)
    run = setup_run(cfg, quiet=True)
    assert run.precision == "fp16" and run.amp_dtype == torch.float16 and run.scaler.is_enabled()
    fit(run)
    trainable, frozen, states = _dtypes(run)
    assert trainable == {torch.float32} and states == {torch.float32} and frozen == {torch.float16}
    assert run.state.step == 3 and run.state.nonfinite_steps == 0
    finish(run, 0.0)  # the end checkpoint; evaluation under fp16 autocast
    log = [json.loads(line) for line in (run.run_dir / "train_log.jsonl").read_text().splitlines()]
    skipped = [r for r in log if r.get("skipped") == "fp16 gradients overflowed"]
    assert skipped and skipped[-1]["loss_scale"] < 2.0**40
    saved = torch.load(run.run_dir / "checkpoints" / "step-0000003" / "optimizer-rank0.pt", weights_only=True)
    assert saved["scaler"]["scale"] == run.scaler.get_scale()

    resumed = setup_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 4})}),
                        quiet=True, resume=True)
    assert resumed.scaler.get_scale() == run.scaler.get_scale() and resumed.state.step == 3


def test_nonfinite_losses_in_fp16_still_count(tmp_path, llama_bf16, monkeypatch):
    real = loop.accumulate_gradients  # the loss scaled and backpropagated as it is, then reported NaN
    monkeypatch.setattr(loop, "accumulate_gradients", lambda *a, **k: (real(*a, **k)[0] * float("nan"), 1))
    run = setup_run(_instruction_cfg(tmp_path, llama_bf16, precision="fp16", max_nonfinite_steps=2), quiet=True)
    with pytest.raises(LeantuneError, match="training diverged"):
        fit(run)
    assert run.state.nonfinite_steps == 2 and isinstance(run.state, LoopState)


# ------------------------------------------------------------------------------------------------- the choice
def _gpu(monkeypatch, cuda: bool, bf16: bool = False, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_the_device_is_the_gpu_then_apple_silicon_then_the_cpu(monkeypatch):
    _gpu(monkeypatch, cuda=True, mps=True)
    assert pick_device() == CUDA and pick_device(1) == torch.device("cuda", 1)
    _gpu(monkeypatch, cuda=False, mps=True)
    assert pick_device() == MPS
    _gpu(monkeypatch, cuda=False, mps=False)
    assert pick_device() == CPU


def test_auto_precision_per_device(monkeypatch):
    _gpu(monkeypatch, cuda=True, bf16=True)
    assert resolve_precision("auto", CUDA) == "bf16" and autocast_dtype("auto", CUDA) == torch.bfloat16
    _gpu(monkeypatch, cuda=True, bf16=False)  # T4, V100
    assert resolve_precision("auto", CUDA) == "fp16" and autocast_dtype("auto", CUDA) == torch.float16
    with pytest.raises(LeantuneError, match="train.precision bf16.*fp16"):
        resolve_precision("bf16", CUDA)
    assert resolve_precision("auto", CPU) == "fp32" and autocast_dtype("auto", CPU) is None
    assert resolve_precision("auto", MPS) == "fp32"
    assert [resolve_precision(p, CPU) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert device_mod.cuda_has_bf16() is False


def test_the_base_dtype_follows_the_compute_dtype():
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert base_dtype("fp32", CPU, bf16) == fp32 and base_dtype("auto", CPU, fp16) == fp32
    assert base_dtype("bf16", CPU, bf16) == bf16 and base_dtype("bf16", CPU, fp32) == fp32  # autocast casts
    assert base_dtype("fp16", CPU, bf16) == fp16 and base_dtype("fp16", CPU, fp32) == fp32
    assert base_dtype("fp32", CPU, torch.int8) == torch.int8
