"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every attention layer.

The prefixes are handed to the model as a pre-filled key/value cache, so any decoder-only transformers model that
takes ``past_key_values`` works. With ``prefix_projection`` the prefixes come from a small MLP (the paper's
reparameterisation), which is applied once at save time so the saved file holds the prefixes themselves (as peft).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import MethodConfig, model_dims
from leantune.methods.prompt_learning import PromptLearningMethod, VirtualTokens


class PrefixTuningConfig(MethodConfig):
    """Prefix-tuning settings."""

    peft_type: ClassVar[str] = "PREFIX_TUNING"

    num_virtual_tokens: int = Field(20, gt=0)
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    """Hidden size of the reparameterisation MLP; None: the model's hidden size."""

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {
            "peft_type": "PREFIX_TUNING",
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": resolved["token_dim"],
            "num_transformer_submodules": 1,
            "num_attention_heads": resolved["num_attention_heads"],
            "num_layers": resolved["num_layers"],
            "prefix_projection": self.prefix_projection,
            "encoder_hidden_size": resolved["encoder_hidden_size"],
            "modules_to_save": resolved.get("modules_to_save"),
        }

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> PrefixTuningConfig:
        if saved.get("num_transformer_submodules", 1) != 1:
            raise LeantuneError("Prefix tuning of encoder-decoder models is not supported by leantune.")
        return cls(
            num_virtual_tokens=saved["num_virtual_tokens"],
            prefix_projection=saved.get("prefix_projection", False),
            encoder_hidden_size=saved.get("encoder_hidden_size"),
            modules_to_save=saved.get("modules_to_save"),
        )


class PrefixEncoder(nn.Module):
    """Maps virtual-token positions to ``layers × 2 × kv_dim`` prefix values (directly, or through an MLP)."""

    def __init__(self, n: int, kv_width: int, hidden: int, projection: bool, encoder_hidden: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.projection = projection
        if projection:
            self.embedding = nn.Embedding(n, hidden, device=device, dtype=dtype)
            self.transform = nn.Sequential(
                nn.Linear(hidden, encoder_hidden, device=device, dtype=dtype),
                nn.Tanh(),
                nn.Linear(encoder_hidden, kv_width, device=device, dtype=dtype),
            )
        else:
            self.embedding = nn.Embedding(n, kv_width, device=device, dtype=dtype)

    def forward(self) -> torch.Tensor:
        weight = self.embedding.weight
        return self.transform(weight) if self.projection else weight

    def freeze_projection(self) -> None:
        """Replace embedding + MLP by the prefixes they compute (as loaded from a saved adapter)."""
        if self.projection:
            with torch.no_grad():
                values = self.forward().detach().clone()
            self.embedding = nn.Embedding.from_pretrained(values, freeze=False)
            del self.transform
            self.projection = False


def _is_decoder_only(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = model.config
    mt = getattr(config, "model_type", None)
    return (
        not getattr(config, "is_encoder_decoder", False)
        and mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


class PrefixTuningMethod(PromptLearningMethod):
    name = "prefix"
    config_cls = PrefixTuningConfig

    def build_encoder(self, model: nn.Module, name: str, config: Any) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(config, PrefixTuningConfig)
        if not _is_decoder_only(model):
            raise LeantuneError(
                f"Prefix tuning needs a decoder-only model whose attention takes a key/value cache (Llama, GPT-2, "
                f"Qwen, ...); {type(model).__name__} is not one. Use prompt tuning, LoRA or IA3 for it."
            )
        dims = model_dims(model)
        c = model.config
        kv_heads = getattr(c, "num_key_value_heads", None) or dims["heads"]
        head_dim = getattr(c, "head_dim", None) or dims["hidden"] // dims["heads"]
        token_dim = kv_heads * head_dim
        words = model.get_input_embeddings().weight
        encoder_hidden = config.encoder_hidden_size or dims["hidden"]
        enc = PrefixEncoder(
            config.num_virtual_tokens, dims["layers"] * 2 * token_dim, token_dim, config.prefix_projection,
            encoder_hidden, words.device, words.dtype,
        )
        if not config.prefix_projection:
            with torch.no_grad():  # N(0, 1) prefixes swamp real keys; start at the scale of the model's embeddings
                enc.embedding.weight.normal_(0.0, float(words.detach().float().std()))
        resolved = {
            "token_dim": token_dim,
            "num_attention_heads": kv_heads,
            "num_layers": dims["layers"],
            "encoder_hidden_size": encoder_hidden,
        }
        return enc, resolved

    def rewrite(self, model: nn.Module, encoder: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        from transformers import DynamicCache

        n = encoder.embedding.weight.shape[0]
        self.prepend_mask(kwargs, n)
        self.shift_positions(kwargs, n, prepend=False)
        if self.cached_length(kwargs) > 0:  # a decoding step: the prefixes are in the cache already
            return kwargs
        state = model.__dict__["_leantune"]
        pairs = self.prefix_pairs(model, state.active, self.batch_size(kwargs))
        from leantune.models.compat import cache_kwarg

        kwargs.pop("past_key_values", None)
        kwargs.pop("cache", None)
        cache_cls = DynamicCache if kwargs.get("use_cache") else _prefix_only_cache_class()
        kwargs[cache_kwarg(model)] = cache_cls(pairs)
        return kwargs

    def prefix_pairs(self, model: nn.Module, name: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Adapter ``name``'s prefixes as one (key, value) pair per layer, each batch × kv_heads × n × head_dim."""
        encoder = model.prompt_encoder[name]
        resolved = model.__dict__["_leantune"].resolved[name]
        n = encoder.embedding.weight.shape[0]
        layers, heads = resolved["num_layers"], resolved["num_attention_heads"]
        head_dim = resolved["token_dim"] // heads
        values = encoder().to(model.get_input_embeddings().weight.dtype)
        kv = values.view(n, layers * 2, heads, head_dim).permute(1, 2, 0, 3)  # (2L, H, n, D)
        kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (2L, B, H, n, D)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(layers)]

    def virtual_tokens(self, model: nn.Module, name: str) -> VirtualTokens:
        with torch.no_grad():
            pairs = self.prefix_pairs(model, name, 1)
        return VirtualTokens(pairs[0][0].shape[-2], prefix=[(k.contiguous(), v.contiguous()) for k, v in pairs])

    def embeddings_to_save(self, encoder: nn.Module) -> torch.Tensor:
        return encoder().detach()

    def loadable_embedding(self, model: nn.Module, name: str) -> nn.Parameter:
        encoder = model.prompt_encoder[name]
        encoder.freeze_projection()
        return encoder.embedding.weight


@functools.cache
def _prefix_only_cache_class() -> type:
    from transformers import DynamicCache

    class PrefixOnlyCache(DynamicCache):
        """The prefixes as a read-only cache (training, no generation): attention sees prefix + sequence, and
        nothing is stored, so a checkpointed block recomputes against the same prefixes."""

        read_only = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            layer = self.layers[layer_idx]
            return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    return PrefixOnlyCache
