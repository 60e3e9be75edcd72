"""What every PEFT method shares: its config, the wrapper layer, target matching and the per-model adapter state.

A method injects *adapter layers* that keep the original module as ``base_layer`` and add their own parameters
beside it, one set per adapter name (peft's layout, so state-dict keys are the same as peft's). The model keeps a
small :class:`AdapterState` in ``model._leantune`` that records the method, the adapters' configs and which one is
active. Helpers several methods use live here too (layer geometry, the base's biases, model sizes); which modules
an adapter goes into is ``targeting.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.rows import RowOp
from leantune.models.quantize import QuantizedLinear, dequantized_weight, is_quantized_layer

try:  # GPT-2 style layers keep their weight as (in_features, out_features)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear, QuantizedLinear, *((Conv1D,) if Conv1D else ()))


class MethodConfig(BaseModel):
    """Base of every method's config: validated, with unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    peft_type: ClassVar[str] = ""
    peft_names: ClassVar[dict[str, str]] = {}
    """peft's name of a setting -> leantune's, where they differ (``lora_alpha`` -> ``alpha``): either is accepted."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (task heads). None: the model's head, if it has one."""

    @model_validator(mode="before")
    @classmethod
    def _accept_peft_names(cls, data: Any) -> Any:
        """Read each of peft's names as leantune's (its value through :meth:`peft_value`); both at once is an error."""
        if not isinstance(data, dict) or not any(k in data for k in cls.peft_names):
            return data
        data = dict(data)
        for theirs, ours in cls.peft_names.items():
            if theirs in data:
                if ours in data:
                    raise ValueError(f"'{ours}' and '{theirs}' (peft's name for it) are both given; give one")
                data[ours] = cls.peft_value(ours, data.pop(theirs))
        return data

    @classmethod
    def peft_value(cls, field: str, value: Any) -> Any:
        """A value given under peft's name of ``field``, as leantune's field takes it."""
        return value

    def for_module(self, name: str) -> MethodConfig:
        """The settings of the module named ``name`` (the same for every module unless the config has per-module
        patterns, as LoRA's ``rank_pattern``)."""
        return self

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """The ``adapter_config.json`` content (peft's keys), given what injection resolved."""
        raise NotImplementedError

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> MethodConfig:
        """Build the config from an ``adapter_config.json`` written by leantune or peft."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- layers


class AdapterLayer(nn.Module):
    """A module that wraps ``base_layer`` and holds, per adapter name, the parameters a method adds.

    Subclasses name their per-adapter containers (``nn.ModuleDict`` or ``nn.ParameterDict``) in
    ``adapter_containers`` (a layer may add one later: a LoRA variant's) and implement ``forward`` (and
    ``_merge``/``_unmerge`` where the maths allows).
    """

    adapter_containers: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapter: str | None = None
        self.adapters_disabled = False
        self.merged_adapters: list[str] = []

    # Let code that reads e.g. ``q_proj.weight`` or ``embed_tokens.weight`` keep working.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def adapter_names(self) -> list[str]:
        container = getattr(self, self.adapter_containers[0])
        return list(container.keys())

    def live_adapter(self) -> str | None:
        """The adapter to apply in this forward pass (None: behave as the base layer)."""
        name = self.active_adapter
        if self.adapters_disabled or name is None or name in self.merged_adapters:
            return None
        return name if name in self.adapter_names else None

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """This adapter's parameters, keyed by their name relative to this layer with the adapter name removed."""
        out: dict[str, nn.Parameter] = {}
        for cname in self.adapter_containers:
            container = getattr(self, cname)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Parameter):
                out[cname] = item
            else:
                for pname, p in item.named_parameters():
                    out[f"{cname}.{pname}"] = p
        return out

    def delete_adapter(self, name: str) -> None:
        for cname in self.adapter_containers:
            container = getattr(self, cname)
            if name in container:
                del container[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def merge(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights (the layer then computes as the base alone)."""
        if name not in self.merged_adapters:
            with torch.no_grad():
                self._merge(name)
            self.merged_adapters.append(name)

    def unmerge(self, name: str) -> None:
        """Undo :meth:`merge`."""
        if name in self.merged_adapters:
            with torch.no_grad():
                self._unmerge(name)
            self.merged_adapters.remove(name)

    def row_op(self, name: str) -> RowOp:
        """What adapter ``name`` does to a slice of a batch's rows, its weights fixed (see
        :mod:`leantune.methods.rows`); the layer should be in evaluation mode."""
        raise LeantuneError(f"{type(self).__name__} adapters cannot be served beside other adapters.")

    def _merge(self, name: str) -> None:
        raise LeantuneError(f"{type(self).__name__} adapters cannot be merged into the base weights.")

    def _unmerge(self, name: str) -> None:
        raise LeantuneError(f"{type(self).__name__} adapters cannot be unmerged.")


class ModulesToSave(nn.Module):
    """Keeps the original module and one trainable copy per adapter (task heads trained in full)."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.adapters_disabled = False

    def add(self, name: str) -> None:
        import copy

        clone = copy.deepcopy(self.original_module)
        for p in clone.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = clone

    def current(self) -> nn.Module:
        name = self.active_adapter
        if self.adapters_disabled or name is None or name not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[name]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.current(), name)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        if name not in self.modules_to_save:
            return {}
        return dict(self.modules_to_save[name].named_parameters())

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save.keys())

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]

    def row_ops(self, name: str) -> dict[str, RowOp]:
        """Adapter ``name``'s copy as row ops, one per linear layer or embedding in it, by name relative to this
        module ("" for the module itself); a copy with parameters elsewhere (a norm) is a LeantuneError."""
        ops: dict[str, RowOp] = {}
        for sub, module in self.modules_to_save[name].named_modules():
            if isinstance(module, (*LINEAR_TYPES, nn.Embedding)):
                ops[sub] = ReplaceRowOp(module)
            elif module._parameters and any(p is not None for p in module._parameters.values()):
                raise LeantuneError(f"modules_to_save holds a {type(module).__name__} ('{sub}'); only heads made of "
                                    "linear layers are served.")
        return ops


class ReplaceRowOp(RowOp):
    """A layer trained in full (``modules_to_save``: a task head): its own copy computes these rows' output."""

    replaces = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def out_features(self) -> int:  # type: ignore[override]
        if isinstance(self.module, nn.Embedding):
            return self.module.embedding_dim
        return in_out_features(self.module)[1]

    def compute(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        if isinstance(self.module, nn.Embedding):
            return self.module(x)
        dtype = weight_dtype_device(self.module)[0]
        return self.module(x if x.dtype == dtype else x.to(dtype))


# --------------------------------------------------------------------------------------------- state


@dataclass
class AdapterState:
    """What leantune keeps on a model it has attached adapters to (``model._leantune``)."""

    method: Method
    configs: dict[str, MethodConfig] = field(default_factory=dict)
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)  # per adapter: what injection resolved
    active: str | None = None
    disabled: bool = False
    hooks: list[Any] = field(default_factory=list)


def get_state(model: nn.Module) -> AdapterState | None:
    return model.__dict__.get("_leantune")


def require_state(model: nn.Module) -> AdapterState:
    state = get_state(model)
    if state is None:
        raise LeantuneError("This model has no leantune adapter: call lt.attach(model, config) first.")
    return state


# --------------------------------------------------------------------------------------------- layer geometry


def is_conv1d(module: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(module, Conv1D)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if is_conv1d(module):
        fan_in, fan_out = module.weight.shape
        return fan_in, fan_out
    return module.in_features, module.out_features


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the layer stores (a quantized one is dequantised)."""
    if is_quantized_layer(module):
        return dequantized_weight(module)
    return module.weight.T if is_conv1d(module) else module.weight


def weight_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device for parameters added beside ``module``, read without dequantising its weight: a
    quantized layer's original dtype, float32 beside bitsandbytes' packed integer weights."""
    if isinstance(module, QuantizedLinear):
        return module.orig_dtype, module.device
    weight = module.weight
    return (weight.dtype if weight.is_floating_point() else torch.float32), weight.device


# --------------------------------------------------------------------------------------------- model


def base_biases(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every bias of the base model, by full name (the copies kept for modules_to_save excluded)."""
    return {
        n: p
        for n, p in model.named_parameters()
        if n.endswith("bias") and ".original_module." not in n and ".modules_to_save." not in n
        and not n.startswith(("original_module.", "modules_to_save."))
        and "prompt_encoder." not in n
    }


def model_dims(model: nn.Module) -> dict[str, int]:
    """Hidden size, layer and head counts of a transformers model (names differ between architectures)."""
    c = model.config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or getattr(c, "n_embd", None)
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", None) or getattr(c, "n_layer", None)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", None) or getattr(c, "n_head", None)
    if not (hidden and layers and heads):
        raise LeantuneError(f"Cannot read hidden size / layers / heads from {type(c).__name__}.")
    return {"hidden": hidden, "layers": layers, "heads": heads}


# --------------------------------------------------------------------------------------------- method


class Method:
    """How one PEFT method injects itself into a model. Subclasses live one per file in ``leantune/methods/``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]]
    mergeable: ClassVar[bool] = True
    multi_adapter: ClassVar[bool] = True  # False for methods that train base parameters in place
    prompt_learning: ClassVar[bool] = False  # keys saved as peft's prompt-learning methods save them

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        """Add adapter ``name`` to ``model``; return what was resolved (target names ...) for saving."""
        raise NotImplementedError

    def learning_rates(self, model: nn.Module, config: MethodConfig, lr: float) -> dict[int, float]:
        """Trainable parameters (by ``id``) that ``config`` trains at another rate than ``lr`` (LoRA+), with that
        rate; the optimizer gives each rate its own parameter group."""
        return {}

    def extra_parameters(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, nn.Parameter]:
        """Base parameters this method trains in place (biases for BitFit ...), keyed by their full name."""
        return {}

    def adapter_tensors(self, model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        """Every parameter of adapter ``name``, keyed as it is saved (without peft's ``base_model.model.``)."""
        state = require_state(model)
        out: dict[str, nn.Parameter] = {}
        for mname, module in model.named_modules():
            if isinstance(module, (AdapterLayer, ModulesToSave)):
                for pname, p in module.adapter_parameters(name).items():
                    out[f"{mname}.{pname}" if mname else pname] = p
        out.update(self.extra_parameters(model, name, state.configs[name]))
        return out

    def save_tensors(self, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
        """The tensors written to ``adapter_model.safetensors`` with their peft keys."""
        return {f"base_model.model.{k}": v.detach() for k, v in self.adapter_tensors(model, name).items()}

    def load_keys(self, model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        """peft key -> live parameter, for loading a saved adapter into the freshly injected one."""
        return {f"base_model.model.{k}": v for k, v in self.adapter_tensors(model, name).items()}

    def saved_resolved(self, model: nn.Module, name: str) -> dict[str, Any]:
        """What ``peft_dict`` needs about adapter ``name`` (targets resolved at injection ...)."""
        return dict(require_state(model).resolved[name])

    def detach(self, model: nn.Module) -> None:
        """Remove what the method added at model level (hooks, prompt encoders) when the last adapter goes."""
        state = require_state(model)
        for handle in state.hooks:
            handle.remove()
        state.hooks.clear()

    def remove(self, model: nn.Module, name: str) -> None:
        """Delete adapter ``name`` from every layer (layers left without adapters are unwrapped)."""
        for mname, module in list(model.named_modules()):
            if isinstance(module, (AdapterLayer, ModulesToSave)):
                module.delete_adapter(name)
                if not module.adapter_names:
                    inner = module.base_layer if isinstance(module, AdapterLayer) else module.original_module
                    model.set_submodule(mname, inner)

    def activate(self, model: nn.Module, name: str | None, disabled: bool) -> None:
        """Route every wrapper to adapter ``name`` (or to the base when ``disabled``)."""
        for module in model.modules():
            if isinstance(module, (AdapterLayer, ModulesToSave)):
                module.active_adapter = name
                module.adapters_disabled = disabled
