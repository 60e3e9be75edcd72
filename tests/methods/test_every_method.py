"""The contract every method keeps, on tiny Llama, GPT-2, BERT and T5 models built from configs.

Only the intended parameters get gradients, the trainable count is the adapter's size, a few optimizer steps lower
the loss, save -> load round-trips exactly, and merging (where the maths allows) gives the same outputs as the
unmerged model and leaves a plain transformers model.
"""

from __future__ import annotations

import pytest
import torch
from every_method_combos import COMBOS, METHOD_CONFIGS
from tiny_models import FACTORIES, batch, output_of, randomize_

import leantune as lt
from leantune.methods.base import AdapterLayer, ModulesToSave

MERGEABLE = {"lora", "dora", "ia3", "bitfit", "head", "full", "lokr", "oft", "vera"}


def _attached(arch, method):
    return lt.attach(FACTORIES[arch](), METHOD_CONFIGS[method]())


def _adapter_params(model):
    state = model.__dict__["_leantune"]
    return state.method.adapter_tensors(model, state.active)


@pytest.mark.parametrize("arch,method", COMBOS)
def test_only_intended_parameters_get_gradients(arch, method):
    model = _attached(arch, method).train()
    intended = {id(p) for p in _adapter_params(model).values()}
    assert intended, "the adapter has no parameters"
    model(**batch(arch)).loss.backward()
    for name, p in model.named_parameters():
        if id(p) in intended:
            assert p.requires_grad and p.grad is not None, f"{name} should be trained"
        else:
            assert not p.requires_grad and p.grad is None, f"{name} should be frozen"


@pytest.mark.parametrize("arch,method", COMBOS)
def test_trainable_count_is_the_adapter_size(arch, method):
    model = _attached(arch, method)
    trainable, total = lt.trainable_parameters(model)
    unique = {id(p): p.numel() for p in _adapter_params(model).values()}
    assert trainable == sum(unique.values()) > 0
    assert total >= trainable
    if method != "full":
        assert trainable < total / 2


@pytest.mark.parametrize("arch,method", COMBOS)
def test_a_few_steps_lower_the_loss(arch, method):
    torch.manual_seed(0)
    model = _attached(arch, method).train()
    for module in model.modules():  # dropout off, so the loss is a deterministic function of the weights
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    inputs = batch(arch)
    losses = []
    for _ in range(6):
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("arch,method", COMBOS)
def test_save_load_round_trip(arch, method, tmp_path):
    model = _attached(arch, method)
    randomize_(_adapter_params(model).values())
    inputs = batch(arch)
    expected = output_of(model, inputs)
    lt.save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    loaded = lt.load_adapter(FACTORIES[arch](), tmp_path / "adapter")
    torch.testing.assert_close(output_of(loaded, inputs), expected, atol=1e-6, rtol=1e-6)
    assert lt.trainable_parameters(loaded)[0] == 0  # loaded for inference by default
    again = lt.load_adapter(FACTORIES[arch](), tmp_path / "adapter", is_trainable=True)
    # trainable again (a prefix MLP is folded into the prefixes it computed, as in peft)
    assert lt.trainable_parameters(again)[0] == sum(p.numel() for p in _adapter_params(again).values()) > 0


@pytest.mark.parametrize("arch,method", [c for c in COMBOS if c[1] in MERGEABLE])
def test_merge_gives_the_same_outputs_and_a_plain_model(arch, method, tmp_path):
    model = _attached(arch, method)
    randomize_(_adapter_params(model).values())
    inputs = batch(arch)
    expected = output_of(model, inputs)

    lt.merge_adapter(model)  # in place, reversible
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-4, rtol=1e-4)
    lt.unmerge_adapter(model)
    torch.testing.assert_close(output_of(model, inputs), expected, atol=1e-5, rtol=1e-5)

    merged = lt.merge(model)
    assert not any(isinstance(m, (AdapterLayer, ModulesToSave)) for m in merged.modules())
    assert "_leantune" not in merged.__dict__
    torch.testing.assert_close(output_of(merged, inputs), expected, atol=1e-4, rtol=1e-4)

    merged.save_pretrained(tmp_path / "merged")
    reloaded = type(merged).from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(output_of(reloaded, inputs), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,method", [c for c in COMBOS if c[1] not in MERGEABLE])
def test_unmergeable_methods_say_so(arch, method):
    model = _attached(arch, method)
    with pytest.raises(lt.LeantuneError, match="cannot be"):
        lt.merge(model)
