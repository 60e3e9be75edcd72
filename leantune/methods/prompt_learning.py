"""What prompt tuning and prefix tuning share: a model-level ``prompt_encoder`` and a forward pre-hook.

The encoders live in ``model.prompt_encoder[adapter_name]`` (peft's parameter names). A forward pre-hook on the
model rewrites the call's arguments (input embeddings, attention mask, labels, cache) so the model itself stays a
plain transformers model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import Method, ModulesToSave, get_state, require_state


def _positional_names(model: nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@dataclass
class VirtualTokens:
    """What a prompt-learning adapter puts before a sequence, as a server feeds it: prompt tuning's ``embeddings``
    (n × hidden, before the prompt's) or prefix tuning's ``prefix`` (one (key, value) pair per layer, each
    1 × kv_heads × n × head_dim, the cache's first entries)."""

    n: int
    embeddings: torch.Tensor | None = None
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class PromptLearningMethod(Method):
    """Base for methods that add virtual tokens at model level instead of wrapping layers."""

    mergeable = False
    prompt_learning = True

    def build_encoder(self, model: nn.Module, name: str, config: Any) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    def rewrite(self, model: nn.Module, encoder: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return the forward kwargs with the virtual tokens of ``encoder`` put in."""
        raise NotImplementedError

    def virtual_tokens(self, model: nn.Module, name: str) -> VirtualTokens:
        """Adapter ``name``'s virtual tokens for one sequence of a decoder-only model, as :meth:`rewrite` puts them
        in (for a server that feeds them itself)."""
        raise NotImplementedError

    def inject(self, model: nn.Module, name: str, config: Any) -> dict[str, Any]:
        encoder, resolved = self.build_encoder(model, name, config)
        if "prompt_encoder" not in model._modules:
            model.prompt_encoder = nn.ModuleDict()
            state = require_state(model)
            state.hooks.append(model.register_forward_pre_hook(self._hook(model), with_kwargs=True))
        model.prompt_encoder[name] = encoder
        return resolved

    def _hook(self, model: nn.Module) -> Any:
        positional = _positional_names(model)

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
            state = get_state(model)
            if state is None or state.disabled or state.active not in model.prompt_encoder:
                return None
            if len(args) > len(positional):
                raise LeantuneError("Too many positional arguments; pass model inputs by keyword.")
            kwargs = {**dict(zip(positional, args, strict=False)), **kwargs}
            if kwargs.get("encoder_outputs") is not None:  # seq2seq decoding step: the encoder already ran
                return (), kwargs
            return (), self.rewrite(model, model.prompt_encoder[state.active], kwargs)

        return hook

    @staticmethod
    def batch_size(kwargs: dict[str, Any]) -> int:
        for key in ("input_ids", "inputs_embeds"):
            if kwargs.get(key) is not None:
                return kwargs[key].shape[0]
        raise LeantuneError("The model was called without input_ids or inputs_embeds.")

    @staticmethod
    def cached_length(kwargs: dict[str, Any]) -> int:
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        return past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0

    @staticmethod
    def shift_positions(kwargs: dict[str, Any], n: int, prepend: bool) -> None:
        """Real tokens sit after the n virtual ones: shift given position ids (and prepend 0..n-1 if asked)."""
        pos = kwargs.get("position_ids")
        if pos is not None:
            pos = pos + n
            if prepend:
                first = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], n)
                pos = torch.cat([first, pos], dim=1)
            kwargs["position_ids"] = pos
        if kwargs.get("cache_position") is not None:
            raise LeantuneError("Prompt/prefix-tuned models generate through leantune.generate.generate, "
                                "not transformers' generate().")

    @staticmethod
    def prepend_mask(kwargs: dict[str, Any], n: int) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None:
            ones = torch.ones(mask.shape[0], n, dtype=mask.dtype, device=mask.device)
            kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)

    # -- adapter files: peft saves prompt-learning weights as 'prompt_embeddings', heads under 'base_model.'
    def adapter_tensors(self, model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        out = {f"prompt_encoder.{name}.{k}": p for k, p in model.prompt_encoder[name].named_parameters()}
        out.update(self._head_tensors(model, name))
        return out

    @staticmethod
    def _head_tensors(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        out = {}
        for mname, module in model.named_modules():
            if isinstance(module, ModulesToSave):
                out.update({f"{mname}.{k}": p for k, p in module.adapter_parameters(name).items()})
        return out

    def save_tensors(self, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
        out = {"prompt_embeddings": self.embeddings_to_save(model.prompt_encoder[name])}
        out.update({f"base_model.{k}": v.detach() for k, v in self._head_tensors(model, name).items()})
        return out

    def load_keys(self, model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        out: dict[str, nn.Parameter] = {"prompt_embeddings": self.loadable_embedding(model, name)}
        out.update({f"base_model.{k}": p for k, p in self._head_tensors(model, name).items()})
        return out

    def embeddings_to_save(self, encoder: nn.Module) -> torch.Tensor:
        return encoder.embedding.weight.detach()

    def loadable_embedding(self, model: nn.Module, name: str) -> nn.Parameter:
        return model.prompt_encoder[name].embedding.weight

    def remove(self, model: nn.Module, name: str) -> None:
        super().remove(model, name)
        encoders = model._modules.get("prompt_encoder")
        if encoders is not None and name in encoders:
            del encoders[name]
            if len(encoders) == 0:
                self.detach(model)

    def detach(self, model: nn.Module) -> None:
        super().detach(model)
        model._modules.pop("prompt_encoder", None)
