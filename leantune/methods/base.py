"""What every PEFT method shares: its config, the wrapper layer, target matching and the per-model adapter state.

A method injects *adapter layers* that keep the original module as ``base_layer`` and add their own parameters
beside it, one set per adapter name (peft's layout, so state-dict keys are the same as peft's). The model keeps a
small :class:`AdapterState` in ``model._leantune`` that records the method, the adapters' configs and which one is
active.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from leantune.errors import LeantuneError
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
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (task heads). None: the model's head, if it has one."""

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """The ``adapter_config.json`` content (peft's keys), given what injection resolved."""
        raise NotImplementedError

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> MethodConfig:
        """Build the config from an ``adapter_config.json`` written by leantune or peft."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- layers


class AdapterLayer(nn.Module):
    """A module that wraps ``base_layer`` and holds, per adapter name, the parameters a method adds.

    Subclasses name their per-adapter containers (``nn.ModuleDict`` or ``nn.ParameterDict``) in
    ``adapter_containers`` and implement ``forward`` (and ``merge``/``unmerge`` where the maths allows).
    """

    adapter_containers: ClassVar[tuple[str, ...]] = ()

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


# --------------------------------------------------------------------------------------------- targets


def target_matches(target: str | list[str] | tuple[str, ...], name: str) -> bool:
    """peft's rule: a list entry matches ``name`` or a ``.name`` suffix; a string is a full-match regex."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def find_targets(
    model: nn.Module,
    target: str | list[str] | tuple[str, ...],
    allowed: tuple[type, ...],
    what: str,
    exclude: list[str] | str | None = None,
) -> list[str]:
    """Full names of the modules matched by ``target``; an error that helps when none or the wrong kind match."""
    skip = protected_prefixes(model)
    names = []
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if ".base_layer" in name or name.endswith("base_layer"):
            continue
        if exclude and target_matches(exclude, name):
            continue
        if target_matches(target, name):
            if isinstance(module, AdapterLayer):
                module = module.base_layer
            if not isinstance(module, allowed):
                kinds = ", ".join(t.__name__ for t in allowed)
                raise LeantuneError(
                    f"{what}: target '{name}' is a {type(module).__name__}; this method adapts {kinds} modules. "
                    "Narrow target_modules so that it names only those."
                )
            names.append(name)
    if not names:
        examples = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, allowed)})
        raise LeantuneError(
            f"{what}: target_modules={target!r} matched no module of {type(model).__name__}. "
            f"Module names that would fit: {examples[:20]}"
        )
    return names


def inject_layers(model: nn.Module, targets: list[str], layer_type: type | tuple[type, ...],
                  make: Callable[[str, nn.Module], AdapterLayer], adapter: str, config: MethodConfig) -> None:
    """Wrap each target in an adapter layer (``make``), unless it already is one, and add ``adapter`` to it."""
    for tname in targets:
        module = model.get_submodule(tname)
        if not isinstance(module, layer_type):
            if isinstance(module, AdapterLayer):
                raise LeantuneError(f"'{tname}' already carries a {type(module).__name__}; one method per model.")
            module = make(tname, module)
            replace_module(model, tname, module)
        module.add(adapter, config)


def protected_prefixes(model: nn.Module) -> list[str]:
    """Modules never targeted by adapters: the copies held for modules_to_save."""
    return [n for n, m in model.named_modules() if isinstance(m, ModulesToSave)]


def portable_target_names(model: nn.Module, chosen: list[str], allowed: tuple[type, ...]) -> list[str]:
    """The shortest target list that peft would resolve to exactly ``chosen`` (leaf names, else full names)."""
    leaves = sorted({n.split(".")[-1] for n in chosen})
    candidates = []
    for name, module in model.named_modules():
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        if name and ".base_layer" not in name and isinstance(base, allowed) and target_matches(leaves, name):
            candidates.append(name)
    if sorted(candidates) == sorted(chosen):
        return leaves
    return sorted(chosen)


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = get_submodule_parent(model, name)
    setattr(parent, child, new)


def is_conv1d(module: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(module, Conv1D)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if is_conv1d(module):
        fan_in, fan_out = module.weight.shape
        return fan_in, fan_out
    return module.in_features, module.out_features


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the layer stores."""
    if is_quantized_layer(module):
        return dequantized_weight(module)
    return module.weight.T if is_conv1d(module) else module.weight


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
                    replace_module(model, mname, inner)

    def activate(self, model: nn.Module, name: str | None, disabled: bool) -> None:
        """Route every wrapper to adapter ``name`` (or to the base when ``disabled``)."""
        for module in model.modules():
            if isinstance(module, (AdapterLayer, ModulesToSave)):
                module.active_adapter = name
                module.adapters_disabled = disabled


def wrap_modules_to_save(model: nn.Module, names: list[str], adapter: str) -> list[str]:
    """Wrap each module named in ``names`` (peft's suffix rule) so adapter ``adapter`` trains a copy of it."""
    found = []
    for mname, module in list(model.named_modules()):
        if not mname or not target_matches(names, mname) or ".original_module" in mname:
            continue
        if ".modules_to_save." in mname:
            continue
        if not isinstance(module, ModulesToSave):
            if isinstance(module, AdapterLayer):
                raise LeantuneError(f"'{mname}' is both an adapter target and in modules_to_save; choose one.")
            wrapper = ModulesToSave(module)
            replace_module(model, mname, wrapper)
            module = wrapper
        module.add(adapter)
        found.append(mname)
    if names and not found:  # peft lists e.g. ["classifier", "score"] for any classifier: one match suffices
        raise LeantuneError(
            f"modules_to_save names {names}, which match no module of {type(model).__name__}. "
            f"Top-level modules: {[n for n, _ in model.named_children()]}"
        )
    return list(dict.fromkeys(names))
