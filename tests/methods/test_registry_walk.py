"""Every method of the registry, end to end: trained a few steps on a tiny model and saved as a run; loaded by HF
peft and saved back where peft has the method; served in one mixed batch (every servable method's adapter and base
rows together) with the tokens (or logits) the run gives alone; exported to every format that applies to it, and
refused by the others. A method added to the registry fails :func:`test_every_method_has_its_plan` until its
serving and exports are decided in :data:`PLAN`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_bert, save_tiny_llama

import leantune as lt
from leantune.config import dump_config, validate_config
from leantune.convert import CONVERTIBLE
from leantune.errors import LeantuneError
from leantune.export import PEFT_LOADABLE, vllm_problems
from leantune.generate import eos_ids, generate_ids
from leantune.methods.registry import REGISTRY, method_config
from leantune.models.loading import load_tokenizer
from leantune.run.loader import load_run
from leantune.serve.encoder import EncodeRequest
from leantune.serve.generation import GenRequest
from leantune.serve.server import ServeOptions, Server
from leantune.serve.weights import SERVABLE_TYPES, AdapterRejected
from leantune.tasks import make_task

FORMATS = ("merged", "vllm", "peft", "lora")
PLAN = {  # method: (base, method_args, served, peft has it, exports that apply)
    "lora": ("llama", {"r": 4}, True, True, {"merged", "vllm", "peft", "lora"}),
    "dora": ("llama", {"r": 4}, True, True, {"merged", "peft", "lora"}),
    "ia3": ("llama", {}, True, True, {"merged", "peft", "lora"}),
    "lokr": ("llama", {"r": 2}, True, True, {"merged", "peft", "lora"}),
    "oft": ("llama", {"oft_block_size": 8}, True, True, {"merged", "peft", "lora"}),
    "vera": ("llama", {"r": 8}, True, True, {"merged", "peft", "lora"}),
    "prompt": ("llama", {"num_virtual_tokens": 3}, True, True, {"peft"}),
    "prefix": ("llama", {"num_virtual_tokens": 3}, True, True, {"peft"}),
    "bottleneck": ("llama", {"bottleneck_size": 8}, True, False, set()),
    "bitfit": ("bert", {}, False, False, {"merged"}),
    "head": ("bert", {}, True, False, {"merged"}),
    "full": ("llama", {}, False, False, {"merged", "lora"}),
}
CORPUS = [f"What colour is item {i}? {['red', 'blue', 'green', 'yellow'][i % 4]}" for i in range(40)] + [
    "hello world the a is", "the film was great", "the room was awful"]
PROMPTS = ["What colour is item 3?", "hello world"]
LABELS = ["neg", "pos"]
NEW_TOKENS = 8


def test_every_method_has_its_plan():
    """The plan is decided for every registered method, and it is what serving and export.py decide."""
    assert set(PLAN) == set(REGISTRY), "decide serving and exports for every method in PLAN"
    for name, (_, args, served, peft, exports) in PLAN.items():
        spec = REGISTRY[name]
        config = method_config(name, args)
        assert served == (spec.peft_type in SERVABLE_TYPES), name
        assert peft == (spec.peft_type in PEFT_LOADABLE) == ("peft" in exports), name
        assert ("merged" in exports) == spec.method.mergeable, name
        assert ("lora" in exports) == (name in CONVERTIBLE), name
        raw = {"peft_type": spec.peft_type, "use_dora": getattr(config, "use_dora", False), "task_type": "CAUSAL_LM"}
        vllm = not vllm_problems(raw, {})
        assert ("vllm" in exports) == vllm, name


def _train(model, inputs, steps: int = 5) -> None:
    """A few AdamW steps on one batch, dropout off."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    model.train()
    for _ in range(steps):
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _inputs(base: str, tokenizer) -> dict[str, torch.Tensor]:
    texts = CORPUS[:6] if base == "llama" else CORPUS[-2:] * 2
    enc = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    if base == "llama":
        enc.pop("token_type_ids", None)
        enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    else:
        enc["labels"] = torch.tensor([0, 1, 0, 1])
    return enc


def _trained_run(folder: Path, model: str, method: str, args: dict, base: str) -> Path:
    """A run folder as ``leantune train`` leaves it, its adapter trained a few steps."""
    folder.mkdir(parents=True)
    task_name = "instruction" if base == "llama" else "classification"
    raw = {"model": model, "task": task_name, "method": method, "method_args": args,
           "data": {"train": "unused.jsonl"}, "train": {"max_length": 64}, "output_dir": str(folder)}
    cfg = validate_config(raw)
    tokenizer = load_tokenizer(model)
    task = make_task(cfg, tokenizer, model)
    if base == "bert":
        task.labels = LABELS
        (folder / "labels.json").write_text(json.dumps(LABELS))
    built = task.build_model(model)
    lt.attach(built, method_config(method, args))
    _train(built, _inputs(base, tokenizer))
    lt.save_adapter(built, folder / "adapter")
    dump_config(cfg, folder / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walk")
    bases = {"llama": save_tiny_llama(tmp / "llama", CORPUS), "bert": save_tiny_bert(tmp / "bert")}
    out = {name: _trained_run(tmp / "runs" / name, bases[base], name, args, base)
           for name, (base, args, *_) in PLAN.items()}
    return {"runs": out, "bases": bases, "tmp": tmp}


def _logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()


def _eval_inputs(run: Path) -> dict[str, torch.Tensor]:
    cfg, task, _ = load_run(run)
    base = "bert" if cfg.task == "classification" else "llama"
    return _inputs(base, task.tokenizer)


@pytest.mark.parametrize("method", [m for m, plan in PLAN.items() if plan[3]])
def test_peft_loads_the_run_and_saves_it_back(runs, method, tmp_path):
    from peft import PeftModel

    run = runs["runs"][method]
    cfg, task, ours = load_run(run)
    inputs = _eval_inputs(run)
    expected = _logits(ours, inputs)
    theirs = PeftModel.from_pretrained(task.build_model(str(cfg.model)), run / "adapter").eval()
    torch.testing.assert_close(_logits(theirs, inputs), expected, atol=1e-5, rtol=1e-5)
    theirs.save_pretrained(tmp_path / "back")
    again = lt.load_adapter(task.build_model(str(cfg.model)), tmp_path / "back").eval()
    torch.testing.assert_close(_logits(again, inputs), expected, atol=1e-5, rtol=1e-5)


def _wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.02)


def test_one_mixed_batch_serves_every_method_as_it_runs_alone(runs):
    """Every servable generative method and base rows decode in one batch, greedy, with the tokens generating with
    that run alone gives; the head-only classifier and base rows share one encoder batch with the logits of the
    run alone; the methods that change the base's weights are refused."""
    served = {m: runs["runs"][m] for m, plan in PLAN.items() if plan[2]}
    server = Server(list((m, str(r)) for m, r in served.items()), ServeOptions(max_batch=64, max_tokens=64))
    for method, plan in PLAN.items():
        if not plan[2]:
            with pytest.raises(AdapterRejected, match="base model's own weights"):
                server.registry.register(method, runs["runs"][method])
    jobs, done = [], []
    generative = [m for m in served if PLAN[m][0] == "llama"]
    for name in [*generative, None]:
        _, task, model = load_run(runs["runs"][name or "lora"])
        if name is None:
            lt.delete_adapter(model, "default")
        adapter = server.registry.adapters[name] if name else None
        weights = server.registry.acquire(adapter) if adapter else None
        for prompt in PROMPTS:
            ids = task.tokenizer(task.prompt_text([{"role": "user", "content": prompt}]),
                                 add_special_tokens=False)["input_ids"]
            want = generate_ids(model, [ids], task.pad_id, eos_ids(model, task.tokenizer), NEW_TOKENS)[0]
            finished = threading.Event()
            req = GenRequest(ids, NEW_TOKENS, lambda _d, f, ev=finished: f is not None and ev.set(), weights,
                             adapter.order if adapter else -1)
            jobs.append((name, prompt, req, want))
            done.append(finished)
    gen_base = next(b for b in server.registry.bases.values() if b.kind == "generate")
    for *_, req, _ in jobs:
        gen_base.engine.submit(req)  # all waiting before the engine starts: one batch
    classify = _classify_jobs(server, runs)
    server.start()
    try:
        for event in done:
            assert event.wait(120), "a request did not finish"
        for name, prompt, req, want in jobs:
            assert req.tokens == want, (name, prompt, req.tokens, want)
        for name, box, want in classify:
            _wait(lambda box=box: box)
            got = torch.stack([r["logits"] for r in box[0]])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{name or 'base'} rows")
    finally:
        server.stop()


def _classify_jobs(server: Server, runs) -> list:
    """The head-only run's rows and base rows in one encoder batch, with their logits alone (the base's: its own
    head, as the served base computes it without adapters)."""
    jobs = []
    base = next(b for b in server.registry.bases.values() if b.kind == "classify")
    for name in ("head", None):
        _, task, model = load_run(runs["runs"]["head"])
        adapter = server.registry.adapters[name] if name else None
        weights = server.registry.acquire(adapter) if adapter else None
        rows = [dict(task.tokenizer(text)) for text in CORPUS[-2:]]
        alone = model if name else base.model
        want = torch.cat([_logits(alone, {k: torch.tensor([v]) for k, v in row.items()}) for row in rows])
        box: list = []
        base.engine.submit(EncodeRequest(rows, box.append, weights, adapter.order if adapter else -1))
        jobs.append((name, box, want))
    return jobs


@pytest.mark.parametrize("method", list(PLAN))
def test_every_export_that_applies_works_and_the_others_refuse(runs, method):
    """merged: transformers alone computes the run's outputs; peft: peft loads it with the run's outputs; vllm: the
    padded LoRA computes the same function; lora: a LoRA at full rank that loads on the run's base."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run = runs["runs"][method]
    exports = PLAN[method][4]
    cfg, task, ours = load_run(run)
    inputs = _eval_inputs(run)
    expected = _logits(ours, inputs)
    before = _logits(task.build_model(str(cfg.model)).eval(), inputs)
    assert not torch.allclose(before, expected[:, -before.shape[1]:]), "the training changed nothing"
    out = runs["tmp"] / "exports" / method
    for fmt in FORMATS:
        kwargs = {"rank": 64} if fmt == "lora" else {}
        if fmt not in exports:
            with pytest.raises(LeantuneError):
                lt.export_run(run, fmt, out / fmt, **kwargs)
            continue
        report = lt.export_run(run, fmt, out / fmt, **kwargs)
        if fmt == "merged":
            auto = AutoModelForCausalLM if cfg.task != "classification" else AutoModelForSequenceClassification
            merged = auto.from_pretrained(report.out).eval()
            torch.testing.assert_close(_logits(merged, inputs), expected, atol=1e-4, rtol=1e-4, msg=fmt)
        elif fmt == "peft":
            from peft import PeftModel

            theirs = PeftModel.from_pretrained(task.build_model(str(cfg.model)), report.out).eval()
            torch.testing.assert_close(_logits(theirs, inputs), expected, atol=1e-5, rtol=1e-5, msg=fmt)
        elif fmt == "vllm":
            padded = lt.load_adapter(task.build_model(str(cfg.model)), report.out).eval()
            torch.testing.assert_close(_logits(padded, inputs), expected, atol=1e-5, rtol=1e-5, msg=fmt)
        else:
            converted = lt.load_adapter(task.build_model(str(cfg.model)), report.out).eval()
            assert torch.isfinite(_logits(converted, inputs)).all()
            if method != "full":  # a full fine-tune also changed what a LoRA cannot hold (norms, embeddings)
                torch.testing.assert_close(_logits(converted, inputs), expected, atol=1e-3, rtol=1e-3, msg=fmt)
