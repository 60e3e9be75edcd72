"""LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): B learns faster than A.

With ``LoraConfig(loraplus_lr_ratio=λ)`` (``method_args: {loraplus_lr_ratio: 16}``) the optimizer gives LoRA's B
matrices the learning rate ``λ · lr`` while A keeps ``lr``. The grouping is peft's ``create_loraplus_optimizer``
(and the paper's reference code): every trainable ``lora_B`` and every trainable 1-D parameter (biases, DoRA
magnitudes, norms) at ``λ · lr``; the A and B of LoRA embedding layers at the fixed ``loraplus_lr_embedding``;
everything else (A, heads' weights) at ``lr``. The rates are the optimizer's parameter
groups, so checkpoints keep them and a resumed run continues with them; the schedule scales every group alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def loraplus_learning_rates(model: nn.Module, lr: float, ratio: float, embedding_lr: float,
                            b_params: Iterable[nn.Parameter],
                            embedding_params: Iterable[nn.Parameter]) -> dict[int, float]:
    """The learning rate of each trainable parameter of ``model`` (by ``id``) that LoRA+ moves away from ``lr``:
    ``b_params`` and 1-D parameters at ``lr · ratio``, ``embedding_params`` at ``embedding_lr``."""
    embedding = {id(p) for p in embedding_params}
    b = {id(p) for p in b_params}
    rates = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in embedding:
            rates[id(p)] = embedding_lr
        elif id(p) in b or p.dim() == 1:
            rates[id(p)] = lr * ratio
    return rates
