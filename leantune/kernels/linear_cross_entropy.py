"""Linear layer + cross-entropy without materialising the [tokens x vocab] logits.

The LM head and its loss are computed chunk by chunk over the tokens: each chunk's logits live only while its
loss and its gradients (with respect to the hidden states, and to the head's weight when that is trained) are
computed, in the forward pass (as Liger-Kernel does). Peak memory drops from ``tokens x vocab`` fp32 (several
hundred MB on a 49k vocabulary) to ``chunk x vocab``; the result and gradients equal the plain computation.
Only target tokens (label != -100) need to be passed: prompt and padding positions cost nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk_size: int) -> torch.Tensor:
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = (h @ w.T).float()
            if bias is not None:
                logits = logits + bias.float()
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(t), device=t.device)
            total += (lse - logits[rows, t]).sum()
            if need_h or need_w or need_b:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits: one chunk buffer in all
                g[rows, t] -= 1.0
                if need_h:
                    grad_h[start:start + chunk_size] = (g.to(h.dtype) @ w).to(hidden.dtype)
                if need_w:
                    grad_w += g.T @ h.float()
                if need_b:
                    grad_b += g.sum(0)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
        ctx.flags = (need_h, need_w, need_b, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b, w_dtype = ctx.flags
        return (
            grad_h * grad_out.to(grad_h.dtype) if need_h else None,
            (grad_w * grad_out).to(w_dtype) if need_w else None,
            (grad_b * grad_out).to(w_dtype) if need_b else None,
            None,
            None,
        )


CHUNK_BYTES = 128 * 2**20  # one chunk's fp32 logits: 512 rows of a 49k vocabulary, 128 rows of Gemma's 262k


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: at most 512, fewer for large vocabularies so one chunk's logits stay within CHUNK_BYTES."""
    return max(16, min(512, CHUNK_BYTES // (4 * vocab_size)))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``; hidden is (N, H), targets (N,).
    ``chunk_size``: rows per chunk (default :func:`chunk_rows` of the vocabulary)."""
    chunk_size = chunk_size or chunk_rows(weight.shape[0])
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if not torch.is_grad_enabled():
        with torch.no_grad():
            return _LinearCrossEntropy.forward(_NoCtx(), hidden, weight, bias, targets, chunk_size)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


class _NoCtx:
    """Stands in for autograd's ctx when no gradient is wanted (evaluation)."""

    needs_input_grad = (False, False, False, False, False)

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        pass


# Model types whose LM head is a plain linear layer applied to the final hidden states (no soft-capping, no
# logit scale, so not granite, which divides the logits by logits_scaling): the head can be taken out of the
# forward pass and fused with the loss. Gemma 2 and 3 are, unless their config sets final_logit_softcapping (Gemma 2
# does; Gemma 3 270M does not).
PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "olmo", "olmo2", "smollm3", "phi3", "gemma",
                          "gemma2", "gemma3_text"}


def fusable_head(model: nn.Module) -> nn.Linear | None:
    """The model's LM head when leantune can fuse it with the loss, else None."""
    if getattr(model.config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if getattr(model.config, "final_logit_softcapping", None) is not None:
        return None  # cap * tanh(logits / cap) is not a linear head: the model's own forward applies it
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if type(head) is nn.Linear else None


@contextlib.contextmanager
def hidden_states_as_logits(model: nn.Module, head: nn.Module) -> Iterator[None]:
    """Within the block the model's LM head is the identity: ``.logits`` holds the final hidden states."""
    for name, module in model.named_modules():
        if module is head:
            model.set_submodule(name, nn.Identity())
            try:
                yield
            finally:
                model.set_submodule(name, head)
            return
    raise RuntimeError("the LM head is not a submodule of the model")
