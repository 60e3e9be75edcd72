"""HF peft as the oracle for one adapter in both directions: leantune saves -> peft loads, peft saves -> leantune
loads; each returns (expected, got) logits for the same inputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import FACTORIES, batch, output_of, randomize_

import leantune as lt

PEFT_ADAPTER_KEYS = ("lora_", "ia3_", "lokr_", "oft_R", "vera_lambda", "modules_to_save")


def peft_adapter_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if any(k in n for k in PEFT_ADAPTER_KEYS)]


def leantune_to_peft(arch: str, config, folder, prepare: Callable | None = None) -> tuple[torch.Tensor, ...]:
    """Attach ``config`` in leantune, randomise the adapter (and ``prepare(model)``), save, load in peft."""
    inputs = batch(arch)
    ours = lt.attach(FACTORIES[arch](), config.model_copy())
    state = ours.__dict__["_leantune"]
    randomize_(state.method.adapter_tensors(ours, "default").values())
    if prepare:
        prepare(ours)
    expected = output_of(ours, inputs)
    lt.save_adapter(ours, folder)
    theirs = PeftModel.from_pretrained(FACTORIES[arch](), folder).eval()
    return expected, output_of(theirs, inputs)


def peft_to_leantune(arch: str, peft_config, folder, prepare: Callable | None = None) -> tuple[torch.Tensor, ...]:
    """Build the adapter with peft, randomise it (and ``prepare(model)``), save, load in leantune."""
    inputs = batch(arch)
    theirs = get_peft_model(FACTORIES[arch](), peft_config).eval()
    randomize_(peft_adapter_params(theirs))
    if prepare:
        prepare(theirs)
    expected = output_of(theirs, inputs)
    theirs.save_pretrained(folder)
    ours = lt.load_adapter(FACTORIES[arch](), folder)
    return expected, output_of(ours, inputs)


def parity_tests(cases: list[tuple], tol: float = 1e-5, prepare_for: Callable | None = None) -> tuple[Callable, ...]:
    """The two parity tests over ``cases`` — (id, model, leantune config, the same adapter as a peft config) —
    for a test module to bind to ``test_...`` names. ``prepare_for(case)`` may give a ``prepare`` for a case."""
    ids = [c[0] for c in cases]

    @pytest.mark.parametrize("case", cases, ids=ids)
    def saved_by_leantune(case, tmp_path):
        expected, got = leantune_to_peft(case[1], case[2], tmp_path, prepare_for(case) if prepare_for else None)
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)

    @pytest.mark.parametrize("case", cases, ids=ids)
    def saved_by_peft(case, tmp_path):
        expected, got = peft_to_leantune(case[1], case[3], tmp_path, prepare_for(case) if prepare_for else None)
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)

    return saved_by_leantune, saved_by_peft
