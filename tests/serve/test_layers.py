"""Served layers compute what leantune's own adapter layers compute, row by row, for every servable method on
Llama (nn.Linear), GPT-2 (Conv1D) and BERT (with a classification head): rows of different adapters and base rows
in one batch."""

from __future__ import annotations

import pytest
import torch
from tiny_models import bert, gpt2, llama, randomize_

import leantune as lt
from leantune.methods.registry import method_config
from leantune.serve.layers import RowContext, Segment, wrap_model
from leantune.serve.weights import AdapterRejected, load_adapter_weights

FACTORIES = {"llama": llama, "gpt2": gpt2, "bert": bert}
METHODS = {
    "lora": ("lora", {"r": 4}),
    "dora": ("dora", {"r": 3}),
    "lora-embedding": ("lora", {"r": 2, "target_modules": ["embed_tokens", "wte", "word_embeddings", "q_proj",
                                                           "c_attn", "query"]}),
    "ia3": ("ia3", {}),
    "bottleneck": ("bottleneck", {"bottleneck_size": 4}),
    "lokr": ("lokr", {"r": 4}),
    "oft": ("oft", {"oft_block_size": 4}),
    "vera": ("vera", {"r": 4}),
}


def _saved(arch, method, folder, seed):
    model = FACTORIES[arch]()
    name, args = METHODS[method]
    if arch == "gpt2" and name == "bottleneck":
        args = {**args, "target_modules": r".*\.mlp\.c_proj"}
    lt.attach(model, method_config(name, args))
    torch.manual_seed(seed)
    randomize_(p for p in model.parameters() if p.requires_grad)
    lt.save_adapter(model, folder)
    return model.eval()


@pytest.mark.parametrize("arch", list(FACTORIES))
def test_one_batch_of_mixed_adapters_equals_each_adapter_alone(arch, tmp_path):
    served = FACTORIES[arch]()
    ctx = RowContext()
    layers = wrap_model(served, ctx)
    references, weights = [], []
    for i, method in enumerate(METHODS):
        reference = _saved(arch, method, tmp_path / method, seed=i)
        references.append(reference)
        weights.append(load_adapter_weights(tmp_path / method, layers, served.config, torch.device("cpu"),
                                            torch.float32, skeleton=FACTORIES[arch]))
    ids = torch.randint(3, 90, (2 * len(METHODS) + 1, 6), generator=torch.Generator().manual_seed(0))
    segments = [Segment(w.ops, 1 + 2 * i, 3 + 2 * i) for i, w in enumerate(weights)]  # row 0: the base
    with torch.no_grad(), ctx.use(segments):
        got = served(input_ids=ids).logits
    with torch.no_grad():
        base_only = served(input_ids=ids).logits  # no segments: every row is the base
        torch.testing.assert_close(got[:1], base_only[:1], atol=0, rtol=0)  # a base row in a mixed batch: exact
        for i, reference in enumerate(references):
            rows = slice(1 + 2 * i, 3 + 2 * i)
            want = reference(input_ids=ids[rows]).logits
            torch.testing.assert_close(got[rows, ..., :want.shape[-1]], want, atol=2e-5, rtol=1e-4)


def test_an_adapter_for_another_base_is_refused(tmp_path):
    _saved("llama", "lora", tmp_path / "llama-lora", seed=0)
    layers = wrap_model(gpt2(), RowContext())
    with pytest.raises(AdapterRejected, match="does not have"):
        load_adapter_weights(tmp_path / "llama-lora", layers, gpt2().config, torch.device("cpu"), torch.float32, gpt2)
