"""Run folders for the serve tests: a tiny base, an adapter with random non-zero weights, saved as training saves.

Training is not what is tested here, so each run is written the way ``leantune train`` writes one (config.yaml,
adapter/ in peft format, labels.json) from a model whose adapter weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_models import WORDS, save_tiny_bert, save_tiny_llama

import leantune as lt
from leantune.config import dump_config, validate_config
from leantune.methods.registry import method_config
from leantune.models.loading import load_tokenizer
from leantune.tasks import make_task

COLORS = ["red", "blue", "green", "yellow"]
CORPUS = [f"What colour is item {i}? {COLORS[i % 4]}" for i in range(60)] + [
    "Answer the question with a short phrase", "### Instruction: ### Response:", "hello world the a is"]


def llama_base(folder: Path) -> str:
    return save_tiny_llama(folder, CORPUS)


def bert_base(folder: Path) -> str:
    return save_tiny_bert(folder, pooling="mean")


def make_run(folder: Path, model: str, method: str = "lora", method_args: dict | None = None,
             task: str = "instruction", labels: list[str] | None = None, seed: int = 0, **cfg_extra) -> Path:
    """A finished-looking run folder whose adapter has random (non-zero) weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"model": model, "task": task, "method": method, "method_args": method_args or {},
           "data": {"train": "unused.jsonl"}, "train": {"max_length": 64}, "output_dir": str(folder), **cfg_extra}
    cfg = validate_config(raw)
    tokenizer = load_tokenizer(model)
    task_obj = make_task(cfg, tokenizer, model)
    if labels is not None:
        task_obj.labels = labels
    built = task_obj.build_model(model)
    lt.attach(built, method_config(method, method_args or {}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in built.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=g) * 0.3
                p.copy_(noise + 1.0 if ("magnitude" in name or "ia3_l" in name) else noise)
    lt.save_adapter(built, folder / "adapter")
    dump_config(cfg, folder / "config.yaml")
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def vocab_words() -> list[str]:
    return list(WORDS)
