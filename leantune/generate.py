"""Batched text generation with the KV cache: greedy or sampled (temperature, top-p), stopping at EOS.

Decoder-only models go through leantune's own decoding loop, so prompt- and prefix-tuned models (whose virtual
tokens live in the forward pre-hook) generate correctly; encoder-decoder models use transformers' ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leantune.detokenize import complete_text
from leantune.models.compat import cache_kwarg, last_logits_only, output_cache


def eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Every token id that ends a sequence (the generation config may list several)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


GREEDY_BELOW = 1e-6
"""Temperatures under this decode greedily (dividing float32 logits by less can overflow into NaN)."""


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest set whose mass reaches top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: nn.Module, prompts: list[list[int]], pad_id: int, stop_ids: list[int],
                 max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[int]]:
    """New token ids for each prompt (left-padded into one batch), without the stop token."""
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = torch.tensor(stop_ids, device=device)
    cache_kw = cache_kwarg(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **last_logits_only(model))  # not [batch, prompt, vocab] logits: 262k-token vocabularies exist
    past = output_cache(out)
    logits = out.logits[:, -1]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        token = sample_tokens(logits, temperature, top_p, generator)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        new.append(token)
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_kw: past})
        past = output_cache(out)
        logits = out.logits[:, -1]
    tokens = torch.stack(new, dim=1).tolist() if new else [[] for _ in prompts]
    result = []
    for row in tokens:
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        result.append(row[:cut])
    return result


def _with_virtual_tokens(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder inputs with a prompt-tuning adapter's virtual tokens in front (transformers' generate() runs the
    encoder itself, past the model-level hook)."""
    from leantune.methods.base import get_state

    state = get_state(model)
    if state is None or not state.method.prompt_learning or state.disabled or state.active is None:
        return batch
    return state.method.rewrite(model, model.prompt_encoder[state.active], dict(batch))


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8, seed: int | None = 0,
             add_special_tokens: bool = False) -> list[str]:
    """Completions of ``prompts`` (already formatted, e.g. with the chat template), in order."""
    was_training = model.training
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    outputs: list[str] = [""] * len(prompts)
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    stop = eos_ids(model, tokenizer)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if seq2seq:
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
            batch = _with_virtual_tokens(model, batch)
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None,
                                 top_p=top_p if temperature > 0 else None)
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
        else:
            ids = generate_ids(model, [encoded[i] for i in idx], tokenizer.pad_token_id, stop, max_new_tokens,
                               temperature, top_p, None if seed is None else seed + start)
            texts = [complete_text(tokenizer, t) for t in ids]  # no half character at max_new_tokens
        for i, text in zip(idx, texts, strict=True):
            outputs[i] = text.strip()
    model.train(was_training)
    return outputs
