"""Prompt tuning (Lester et al. 2021): trainable virtual-token embeddings prepended to the input embeddings."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import MethodConfig, model_dims
from leantune.methods.prompt_learning import PromptLearningMethod, VirtualTokens


class PromptTuningConfig(MethodConfig):
    """Prompt-tuning settings. ``init="text"`` starts the virtual tokens from the embeddings of ``init_text``."""

    peft_type: ClassVar[str] = "PROMPT_TUNING"
    peft_names: ClassVar[dict[str, str]] = {"prompt_tuning_init": "init", "prompt_tuning_init_text": "init_text"}

    num_virtual_tokens: int = Field(20, gt=0)
    init: Literal["vocab", "random", "text"] = "vocab"
    """vocab: rows of the model's own embedding matrix (right scale); random: N(0, 1) as peft; text: see init_text."""
    init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    """Tokenizer for ``init_text``; None: the model's own folder (``model.config._name_or_path``)."""

    @classmethod
    def peft_value(cls, field: str, value: Any) -> Any:
        if field == "init" and isinstance(value, str):  # peft's PromptTuningInit names (or leantune's own)
            return {"SAMPLE_VOCAB": "vocab", "RANDOM": "random", "TEXT": "text"}.get(value.upper(), value)
        return value

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {
            "peft_type": "PROMPT_TUNING",
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": resolved["token_dim"],
            "num_transformer_submodules": resolved["num_transformer_submodules"],
            "num_attention_heads": resolved["num_attention_heads"],
            "num_layers": resolved["num_layers"],
            "prompt_tuning_init": {"vocab": "SAMPLE_VOCAB", "random": "RANDOM", "text": "TEXT"}[self.init],
            "prompt_tuning_init_text": self.init_text,
            "tokenizer_name_or_path": resolved.get("tokenizer_name_or_path"),
            "modules_to_save": resolved.get("modules_to_save"),
        }

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> PromptTuningConfig:
        # The weights come from the file, so the initialisation is not replayed (no tokenizer needed to load).
        return cls(num_virtual_tokens=saved["num_virtual_tokens"], init="random", modules_to_save=saved.get("modules_to_save"))


class PromptEmbedding(nn.Module):
    """``num_virtual_tokens × num_transformer_submodules`` trainable embeddings."""

    def __init__(self, rows: int, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, dim, device=device, dtype=dtype)

    def forward(self, batch_size: int, n: int) -> torch.Tensor:
        return self.embedding.weight[:n].unsqueeze(0).expand(batch_size, -1, -1)


class PromptTuningMethod(PromptLearningMethod):
    name = "prompt"
    config_cls = PromptTuningConfig

    def build_encoder(self, model: nn.Module, name: str, config: Any) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(config, PromptTuningConfig)
        dims = model_dims(model)
        words = model.get_input_embeddings()
        submodules = transformer_submodules(model)
        n = config.num_virtual_tokens
        enc = PromptEmbedding(n * submodules, dims["hidden"], words.weight.device, words.weight.dtype)
        tokenizer_path = config.tokenizer_name_or_path or getattr(model.config, "_name_or_path", None) or None
        with torch.no_grad():
            if config.init == "random":
                nn.init.normal_(enc.embedding.weight)
            else:
                ids = self._init_ids(config, words.weight.shape[0], n * submodules, tokenizer_path)
                enc.embedding.weight.copy_(words.weight[ids].detach())
        resolved = {
            "token_dim": dims["hidden"],
            "num_transformer_submodules": submodules,
            "num_attention_heads": dims["heads"],
            "num_layers": dims["layers"],
            "tokenizer_name_or_path": tokenizer_path if config.init == "text" else None,
        }
        return enc, resolved

    @staticmethod
    def _init_ids(config: PromptTuningConfig, vocab: int, rows: int, tokenizer_path: str | None) -> torch.Tensor:
        if config.init == "vocab":
            g = torch.Generator().manual_seed(0)
            return torch.randint(0, vocab, (rows,), generator=g)
        if not config.init_text:
            raise LeantuneError("Prompt tuning with init='text' needs init_text.")
        if not tokenizer_path:
            raise LeantuneError("Prompt tuning with init='text' needs tokenizer_name_or_path (the model has none).")
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(tokenizer_path)(config.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LeantuneError(f"init_text {config.init_text!r} tokenises to nothing.")
        reps = -(-rows // len(ids))
        return torch.tensor((ids * reps)[:rows])

    def virtual_tokens(self, model: nn.Module, name: str) -> VirtualTokens:
        weight = model.prompt_encoder[name].embedding.weight.detach()
        return VirtualTokens(weight.shape[0], embeddings=weight)

    def rewrite(self, model: nn.Module, encoder: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        n = encoder.embedding.weight.shape[0] // transformer_submodules(model)  # virtual tokens per sequence
        if self.cached_length(kwargs) > 0:  # a decoding step: the virtual tokens are in the cache already
            self.prepend_mask(kwargs, n)
            self.shift_positions(kwargs, n, prepend=False)
            return kwargs
        embeds = kwargs.pop("inputs_embeds", None)
        input_ids = kwargs.pop("input_ids", None)
        if embeds is None:
            embeds = model.get_input_embeddings()(input_ids)
        batch = embeds.shape[0]
        prompts = encoder(batch, n).to(embeds.dtype)
        kwargs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        self.prepend_mask(kwargs, n)
        self.shift_positions(kwargs, n, prepend=True)
        tt = kwargs.get("token_type_ids")
        if tt is not None:
            kwargs["token_type_ids"] = torch.cat([torch.zeros(batch, n, dtype=tt.dtype, device=tt.device), tt], 1)
        labels = kwargs.get("labels")
        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        if labels is not None and not seq2seq and labels.dim() == 2 and labels.shape[1] == embeds.shape[1]:
            pad = torch.full((batch, n), -100, dtype=labels.dtype, device=labels.device)
            kwargs["labels"] = torch.cat([pad, labels], dim=1)
        return kwargs


def transformer_submodules(model: nn.Module) -> int:
    """peft's ``num_transformer_submodules``: 2 for an encoder-decoder (virtual tokens for each stack), else 1."""
    return 2 if getattr(model.config, "is_encoder_decoder", False) else 1
