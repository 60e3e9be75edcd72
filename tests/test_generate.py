"""Batched generation with the KV cache equals step-by-step greedy decoding without a cache, for every method."""

import pytest
import torch
from tiny_models import gpt2, llama, randomize_

import leantune as lt
from leantune.generate import generate_ids, sample_tokens

PROMPTS = [[5, 9, 11, 30, 7], [8, 40]]


def reference_greedy(model, prompt, steps):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


CONFIGS = {
    "base": None,
    "lora": lambda: lt.LoraConfig(r=4, init="random"),
    "prompt": lambda: lt.PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: lt.PrefixTuningConfig(num_virtual_tokens=3),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_cached_batched_greedy_matches_the_reference(arch, method):
    model = {"llama": llama, "gpt2": gpt2}[arch]()
    if CONFIGS[method]:
        lt.attach(model, CONFIGS[method]())
        randomize_(p for p in model.parameters() if p.requires_grad)
    model.eval()
    got = generate_ids(model, PROMPTS, pad_id=0, stop_ids=[], max_new_tokens=6)
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        assert tokens == reference_greedy(model, prompt, 6)


def test_stops_at_eos_and_pads_finished_rows():
    model = llama().eval()
    first = reference_greedy(model, PROMPTS[0], 3)
    got = generate_ids(model, PROMPTS, pad_id=0, stop_ids=[first[1]], max_new_tokens=8)
    assert got[0] == first[:1]


def test_sampling_is_seeded_and_top_p_keeps_the_head():
    logits = torch.tensor([[5.0, 4.0, -10.0, -10.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_tokens(logits, 1.0, 0.9, g)) for _ in range(50)}
    assert draws <= {0, 1}
    assert int(sample_tokens(logits, 0.0, 1.0, None)) == 0
    assert int(sample_tokens(logits, 1e-300, 1.0, g)) == 0  # a temperature that underflows is no NaN


def test_seq2seq_generation_keeps_prompt_tuning():
    from tiny_models import t5

    from leantune.generate import _with_virtual_tokens

    model = lt.attach(t5(), lt.PromptTuningConfig(num_virtual_tokens=3)).eval()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    gen = model.generate(**_with_virtual_tokens(model, batch), max_new_tokens=4, do_sample=False)
    # reference: greedy decoding by full forward passes, which go through the prompt-tuning hook
    dec = torch.tensor([[0]])
    with torch.no_grad():
        for _ in range(4):
            nxt = model(**batch, decoder_input_ids=dec).logits[0, -1].argmax()
            dec = torch.cat([dec, nxt.view(1, 1)], dim=1)
    assert gen[0, 1:].tolist() == dec[0, 1:].tolist()[: gen.shape[1] - 1]
