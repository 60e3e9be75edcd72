"""Which modules an adapter goes into (peft's matching, architecture defaults), and wrapping them in place.

A list entry matches a module whose full name equals it or ends with ``"." + entry``; a string is a regular
expression that must match the whole name (peft's rule, so a saved ``target_modules`` means the same in peft).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import LINEAR_TYPES, AdapterLayer, MethodConfig, ModulesToSave
from leantune.models.targets import arch_targets, block_linear_names


def target_matches(target: str | list[str] | tuple[str, ...], name: str) -> bool:
    """peft's rule: a list entry matches ``name`` or a ``.name`` suffix; a string is a full-match regex."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """The value of the first key of ``patterns`` that matches the end of module ``name`` at a dot boundary (a key
    is a regex: peft's ``rank_pattern``/``alpha_pattern`` rule), else ``default``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return patterns[key]
    return default


def layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    """The layer index in module ``name`` as peft reads it: the first number segment after ``<layers_pattern>.``,
    or (no pattern) the first number segment after two names; None where there is none."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match["idx"]) if match else None


def check_patterns(*patterns: dict[str, Any]) -> None:
    """Every key of ``rank_pattern``/``alpha_pattern``-style ``patterns`` is a regular expression (a ValueError
    names the one that is not)."""
    for key in (k for p in patterns for k in p):
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"rank_pattern/alpha_pattern key {key!r} is not a regular expression ({e})") from None


def check_layer_selection(target: list[str] | str | None, layers: list[int] | int | None,
                          layers_pattern: list[str] | str | None) -> None:
    """peft's rules for ``layers_to_transform`` and ``layers_pattern`` (a ValueError names the keys)."""
    if layers_pattern and layers is None:
        raise ValueError("layers_pattern applies with layers_to_transform only: set layers_to_transform too")
    if isinstance(target, str) and layers is not None:
        raise ValueError(f"layers_to_transform needs target_modules as a list of names (peft's rule), not {target!r}")


def keep_layers(names: list[str], target: list[str] | str | None, layers: list[int] | int | None,
                layers_pattern: list[str] | str | None, what: str) -> list[str]:
    """The targets in the layers ``layers`` (peft's ``layers_to_transform``; None or [] keeps all). As in peft, a
    name listed whole in ``target`` is kept wherever it is."""
    if layers is None or layers == []:
        return names
    wanted = {layers} if isinstance(layers, int) else set(layers)
    whole = set(target) if isinstance(target, list) else set()
    kept = [n for n in names if n in whole or layer_index(n, layers_pattern) in wanted]
    if not kept:
        found = sorted({i for n in names if (i := layer_index(n, layers_pattern)) is not None})
        raise LeantuneError(f"{what}: layers_to_transform={layers!r} (layers_pattern={layers_pattern!r}) leaves no "
                            f"target; the targets are in layers {found}")
    return kept


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


def resolve_linear_targets(
    model: nn.Module,
    target: list[str] | str | None,
    exclude: list[str] | str | None,
    what: str,
    embeddings: bool = False,
) -> list[str]:
    """Full names of the layers to adapt: explicit names/regex, ``"all-linear"``, or the architecture default (for
    a family without one: every linear layer inside the transformer blocks)."""
    if target is None:
        defaults = arch_targets(model)
        target = list(defaults.lora) if defaults is not None else block_linear_names(model, is_linear) or "all-linear"
    if target == "all-linear":
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        skip = protected_prefixes(model)
        names = []
        for mname, module in model.named_modules():
            base = module.base_layer if isinstance(module, AdapterLayer) else module
            if (
                isinstance(base, LINEAR_TYPES)
                and base is not out_emb
                and ".base_layer" not in mname
                and not any(mname == p or mname.startswith(p + ".") for p in skip)
                and not (exclude and target_matches(exclude, mname))
            ):
                names.append(mname)
        if not names:
            raise LeantuneError(f"{what}: 'all-linear' found no linear layer in {type(model).__name__}.")
        return names
    allowed = LINEAR_TYPES + ((nn.Embedding,) if embeddings else ())
    return find_targets(model, target, allowed, what, exclude)


def inject_layers(model: nn.Module, targets: list[str], layer_type: type | tuple[type, ...],
                  make: Callable[[str, nn.Module], AdapterLayer], adapter: str, config: MethodConfig) -> None:
    """Wrap each target in an adapter layer (``make``), unless it already is one, and add ``adapter`` to it with
    the config's settings for that module."""
    for tname in targets:
        module = model.get_submodule(tname)
        if not isinstance(module, layer_type):
            if isinstance(module, AdapterLayer):
                raise LeantuneError(f"'{tname}' already carries a {type(module).__name__}; one method per model.")
            module = make(tname, module)
            model.set_submodule(tname, module)
        module.add(adapter, config.for_module(tname))


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer (or an adapter layer around one)."""
    return isinstance(module.base_layer if isinstance(module, AdapterLayer) else module, LINEAR_TYPES)


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
            model.set_submodule(mname, wrapper)
            module = wrapper
        module.add(adapter)
        found.append(mname)
    if names and not found:  # peft lists e.g. ["classifier", "score"] for any classifier: one match suffices
        raise LeantuneError(
            f"modules_to_save names {names}, which match no module of {type(model).__name__}. "
            f"Top-level modules: {[n for n, _ in model.named_children()]}"
        )
    return list(dict.fromkeys(names))
