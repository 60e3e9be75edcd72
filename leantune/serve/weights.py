"""An adapter folder (peft format: ``adapter_config.json`` + ``adapter_model.safetensors``) read into per-layer ops
for a shared base, and checked against that base before anything is served with it.

Every key of the file must land on a layer of the base with the right shape, every layer's set of tensors must be
complete, and every value finite; otherwise :class:`AdapterRejected` names the file, the key and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from leantune.errors import LeantuneError
from leantune.serve.layers import is_conv1d
from leantune.serve.ops import BottleneckOp, IA3Op, LayerOp, LoraEmbeddingOp, LoraOp, ReplaceOp
from leantune.serve.runs import WEIGHT_UPDATE_PARTS, dense_weight, parse_adapter_config, weight_update_ops

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHT_UPDATE_TYPES = ("LOKR", "OFT", "VERA")
"""Served through leantune's own layers of the method (see :func:`leantune.serve.runs.weight_update_ops`)."""
SERVABLE_TYPES = ("LORA", "IA3", "BOTTLENECK", "PROMPT_TUNING", "PREFIX_TUNING", "HEAD_ONLY", *WEIGHT_UPDATE_TYPES)


class AdapterRejected(LeantuneError):
    """An adapter that cannot be served on this base (the message says why)."""


@dataclass
class VirtualTokens:
    """Prompt tuning (``embeddings``: n × hidden, put before the prompt) or prefix tuning (``prefix``: one
    (key, value) pair per layer, each 1 × kv_heads × n × head_dim, put in the cache before the prompt)."""

    n: int
    embeddings: torch.Tensor | None = None
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class AdapterWeights:
    """What one adapter changes on its base: ops per layer name, and virtual tokens for prompt/prefix tuning."""

    method: str  # peft_type
    ops: dict[str, LayerOp] = field(default_factory=dict)
    virtual: VirtualTokens | None = None


def read_config(folder: Path) -> dict[str, Any]:
    """The raw adapter config, checked by leantune's method config (unsupported peft options are refused)."""
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise AdapterRejected(f"{folder}: no {CONFIG_NAME}.")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterRejected(f"{cfg_file}: not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise AdapterRejected(f"{cfg_file}: expected a JSON object.")
    peft_type = raw.get("peft_type")
    if peft_type in ("BITFIT", "FULL"):
        raise AdapterRejected(f"{cfg_file}: a {peft_type} run changes the base model's own weights, so it cannot share "
                              "a base with other adapters; export it merged and serve that as its own model.")
    if peft_type not in SERVABLE_TYPES:
        raise AdapterRejected(f"{cfg_file}: peft_type {peft_type!r} is not servable; served: {list(SERVABLE_TYPES)}.")
    try:
        parse_adapter_config(folder)  # leantune's own validation of every field
    except LeantuneError as e:
        raise AdapterRejected(str(e)) from None
    if peft_type in ("LORA", *WEIGHT_UPDATE_TYPES) and raw.get("bias", "none") != "none":
        raise AdapterRejected(f"{cfg_file}: bias={raw['bias']!r} trains the base model's biases, which other adapters "
                              "share; export it merged instead.")
    return raw


def load_adapter_weights(folder: Path, layers: dict[str, nn.Module], model_config: Any,
                         device: torch.device, dtype: torch.dtype,
                         skeleton: Callable[[], nn.Module] | None = None) -> AdapterWeights:
    """Read and check the adapter in ``folder`` against the base whose servable ``layers`` are given by name.
    ``skeleton`` makes a model of the base's architecture (its weights may be on the meta device): LoKr, OFT and
    VeRA adapters are loaded into one by leantune's own layers of the method (:func:`weight_update_ops`)."""
    raw = read_config(folder)
    weights_file = folder / WEIGHTS_NAME
    if not weights_file.is_file():
        raise AdapterRejected(f"{folder}: no {WEIGHTS_NAME}.")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as e:
        raise AdapterRejected(f"{weights_file}: not a readable safetensors file ({e}).") from None
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise AdapterRejected(f"{weights_file}: '{key}' holds NaN or infinite values.")
    tensors = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    reader = _Reader(weights_file, tensors, layers)
    adapter = AdapterWeights(method=raw["peft_type"])
    if raw["peft_type"] in ("PROMPT_TUNING", "PREFIX_TUNING"):
        adapter.virtual = _virtual_tokens(raw, reader, model_config)
        prefix = "base_model."
    else:
        prefix = "base_model.model."
    _heads(raw, reader, adapter, prefix)
    if raw["peft_type"] == "LORA":
        _lora(raw, reader, adapter, prefix)
    elif raw["peft_type"] == "IA3":
        _ia3(reader, adapter, prefix)
    elif raw["peft_type"] == "BOTTLENECK":
        _bottleneck(raw, reader, adapter, prefix)
    elif raw["peft_type"] in WEIGHT_UPDATE_TYPES:
        _weight_update(reader, adapter, prefix, folder, skeleton, device, dtype)
    reader.check_all_used()
    if not adapter.ops and adapter.virtual is None:
        raise AdapterRejected(f"{weights_file}: no adapter weights in the file.")
    return adapter


class _Reader:
    """Takes tensors out of the file by key; whatever is left at the end matched nothing."""

    def __init__(self, source: Path, tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> None:
        self.source, self.tensors, self.layers = source, dict(tensors), layers

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise AdapterRejected(f"{self.source}: '{key}' is missing.")
        return self.tensors.pop(key)

    def layer(self, name: str, key: str) -> nn.Module:
        layer = self.layers.get(name)
        if layer is None:
            raise AdapterRejected(f"{self.source}: '{key}' names layer '{name}', which the base model does not have "
                                  "(was it trained on another base?).")
        return layer

    def expect(self, key: str, value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(value.shape) != shape:
            raise AdapterRejected(f"{self.source}: '{key}' has shape {tuple(value.shape)}; the base model needs "
                                  f"{shape} (was it trained on another base?).")
        return value

    def check_all_used(self) -> None:
        if self.tensors:
            left = sorted(self.tensors)
            raise AdapterRejected(f"{self.source}: {len(left)} key(s) match nothing in the base model, e.g. {left[:3]}.")


def in_out(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Embedding):
        return layer.num_embeddings, layer.embedding_dim
    if is_conv1d(layer):
        return tuple(layer.weight.shape)  # type: ignore[return-value]
    return layer.in_features, layer.out_features


def _module_keys(tensors: dict[str, torch.Tensor], prefix: str, marker: str) -> list[str]:
    """Layer names that have a key ``prefix + name + marker``."""
    pattern = re.compile(re.escape(prefix) + r"(.+)" + re.escape(marker) + r"$")
    return sorted({m.group(1) for k in tensors if (m := pattern.match(k))})


def _scaling(raw: dict[str, Any]) -> float:
    r, alpha = raw["r"], raw.get("lora_alpha", 8)
    return alpha / (r ** 0.5) if raw.get("use_rslora") else alpha / r


def _lora(raw: dict[str, Any], reader: _Reader, adapter: AdapterWeights, prefix: str) -> None:
    s = _scaling(raw)
    for name in _module_keys(reader.tensors, prefix, ".lora_A.weight"):
        layer, A, B, m = _lora_tensors(raw, reader, prefix + name, ".lora_A.weight", ".lora_B.weight", name, False)
        op = LoraOp(A * s, B)
        if m is not None:
            W = dense_weight(layer).to(A.dtype)
            op.dora_scale = m / torch.linalg.norm(W + (B @ A) * s, dim=1)
        adapter.ops[name] = op
    for name in _module_keys(reader.tensors, prefix, ".lora_embedding_A"):
        layer, A, B, m = _lora_tensors(raw, reader, prefix + name, ".lora_embedding_A", ".lora_embedding_B", name, True)
        op = LoraEmbeddingOp(A, B, s)
        if m is not None:
            op.dora_scale = m / torch.linalg.norm(layer.weight + (A.T @ B.T) * s, dim=0)
        adapter.ops[name] = op


def _lora_tensors(raw: dict[str, Any], reader: _Reader, key: str, a: str, b: str, name: str,
                  embedding: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(layer, A, B, DoRA magnitude or None) of one layer, with their shapes checked against the layer."""
    layer = reader.layer(name, key + a)
    if isinstance(layer, nn.Embedding) != embedding:
        kind = "an embedding" if embedding else "a linear layer"
        raise AdapterRejected(f"{reader.source}: '{key + a}' is the LoRA of {kind}, and '{name}' is not one.")
    fan_in, fan_out = in_out(layer)
    A = reader.take(key + a)
    r = A.shape[0]
    A = reader.expect(key + a, A, (r, fan_in))
    B = reader.expect(key + b, reader.take(key + b), (fan_out, r))
    m = None
    if raw.get("use_dora"):
        m = reader.expect(key + ".lora_magnitude_vector", reader.take(key + ".lora_magnitude_vector"), (fan_out,))
    return layer, A, B, m


def _ia3(reader: _Reader, adapter: AdapterWeights, prefix: str) -> None:
    for name in _module_keys(reader.tensors, prefix, ".ia3_l"):
        key = f"{prefix}{name}.ia3_l"
        layer = reader.layer(name, key)
        fan_in, fan_out = in_out(layer)
        vec = reader.take(key)
        if tuple(vec.shape) == (fan_out, 1):
            adapter.ops[name] = IA3Op(vec.flatten(), feedforward=False)
        else:
            reader.expect(key, vec, (1, fan_in))
            adapter.ops[name] = IA3Op(vec.flatten(), feedforward=True)


def _weight_update(reader: _Reader, adapter: AdapterWeights, prefix: str, folder: Path,
                   skeleton: Callable[[], nn.Module] | None, device: torch.device, dtype: torch.dtype) -> None:
    """LoKr, OFT, VeRA: the layers the file adapts, then their ops from leantune's own method layers (which check
    every key and shape as ``lt.load_adapter`` does)."""
    names = sorted({name for name in reader.layers for key in reader.tensors if key.startswith(f"{prefix}{name}.")
                    and key[len(prefix) + len(name) + 1:].startswith(WEIGHT_UPDATE_PARTS)})
    unknown = [k for k in reader.tensors if k.startswith(prefix) and not any(k.startswith(f"{prefix}{n}.") for n in names)
               and k.rpartition(".")[2].startswith(WEIGHT_UPDATE_PARTS)]
    if unknown:
        raise AdapterRejected(f"{reader.source}: {unknown[:3]} name layers the base model does not have "
                              "(was it trained on another base?).")
    if skeleton is None:
        raise AdapterRejected(f"{reader.source}: a {adapter.method} adapter is served through a model skeleton, and "
                              "none was given.")
    try:
        adapter.ops.update(weight_update_ops(skeleton(), folder, reader.layers, names, device, dtype))
    except LeantuneError as e:
        raise AdapterRejected(str(e)) from None
    reader.tensors.clear()  # every key was checked by lt.load_adapter


def _bottleneck(raw: dict[str, Any], reader: _Reader, adapter: AdapterWeights, prefix: str) -> None:
    activation = raw.get("non_linearity", "relu")
    if activation not in ("relu", "gelu", "silu", "tanh"):
        raise AdapterRejected(f"{reader.source}: non_linearity {activation!r} is not one of relu, gelu, silu, tanh.")
    for name in _module_keys(reader.tensors, prefix, ".adapter_down.weight"):
        k = f"{prefix}{name}"
        layer = reader.layer(name, f"{k}.adapter_down.weight")
        _, hidden = in_out(layer)
        down_w = reader.take(f"{k}.adapter_down.weight")
        size = down_w.shape[0]
        reader.expect(f"{k}.adapter_down.weight", down_w, (size, hidden))
        adapter.ops[name] = BottleneckOp(
            down_w, reader.expect(f"{k}.adapter_down.bias", reader.take(f"{k}.adapter_down.bias"), (size,)),
            reader.expect(f"{k}.adapter_up.weight", reader.take(f"{k}.adapter_up.weight"), (hidden, size)),
            reader.expect(f"{k}.adapter_up.bias", reader.take(f"{k}.adapter_up.bias"), (hidden,)),
            activation, float(raw.get("scaling", 1.0)))


def _heads(raw: dict[str, Any], reader: _Reader, adapter: AdapterWeights, prefix: str) -> None:
    """``modules_to_save``: every trained copy must be made of layers the base has (a head of linear layers)."""
    names = raw.get("modules_to_save") or []
    if not names:
        return
    for key in sorted(reader.tensors):
        if not key.startswith(prefix) or not key.endswith(".weight"):
            continue
        name = key[len(prefix):-len(".weight")]
        if not _in_module(name, names) or name.rpartition(".")[2] in ADAPTER_PARTS:
            continue
        layer = reader.layer(name, key)
        weight = reader.take(key)
        bias_key = f"{prefix}{name}.bias"
        bias = reader.take(bias_key) if bias_key in reader.tensors else None
        if isinstance(layer, nn.Embedding):
            reader.expect(key, weight, (layer.num_embeddings, weight.shape[1]))
            adapter.ops[name] = ReplaceOp(weight, None, embedding=True)
            continue
        fan_in, _ = in_out(layer)
        if is_conv1d(layer):
            weight = weight.T
        reader.expect(key, weight, (weight.shape[0], fan_in))
        if bias is not None:
            reader.expect(bias_key, bias, (weight.shape[0],))
        adapter.ops[name] = ReplaceOp(weight.contiguous(), bias)
    leftovers = [k for k in reader.tensors if k.startswith(prefix) and _in_module(k[len(prefix):], names)
                 and k.rpartition(".")[0].rpartition(".")[2] not in ADAPTER_PARTS]
    if leftovers:
        raise AdapterRejected(f"{reader.source}: modules_to_save tensor(s) {leftovers[:3]} are not weights of "
                              "linear layers; only heads made of linear layers are served.")


ADAPTER_PARTS = ("lora_A", "lora_B", "adapter_down", "adapter_up")


def _in_module(name: str, modules: list[str]) -> bool:
    """Whether layer ``name`` is, or is inside, a module that ``modules`` names (peft's suffix rule)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        path = ".".join(parts[:i])
        if any(path == m or path.endswith("." + m) for m in modules):
            return True
    return False


def _virtual_tokens(raw: dict[str, Any], reader: _Reader, model_config: Any) -> VirtualTokens:
    key = "prompt_embeddings"
    values = reader.take(key)
    n = int(raw["num_virtual_tokens"])
    if getattr(model_config, "is_encoder_decoder", False):
        raise AdapterRejected(f"{reader.source}: prompt/prefix tuning of encoder-decoder models is not served.")
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "n_embd", None)
    if raw["peft_type"] == "PROMPT_TUNING":
        return VirtualTokens(n, embeddings=reader.expect(key, values, (n, hidden)))
    layers, heads, token_dim = int(raw["num_layers"]), int(raw["num_attention_heads"]), int(raw["token_dim"])
    reader.expect(key, values, (n, layers * 2 * token_dim))
    model_layers = getattr(model_config, "num_hidden_layers", None) or getattr(model_config, "n_layer", None)
    if layers != model_layers:
        raise AdapterRejected(f"{reader.source}: prefixes for {layers} layers; the base model has {model_layers}.")
    head_dim = token_dim // heads
    kv = values.view(n, layers * 2, heads, head_dim).permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, H, n, D)
    return VirtualTokens(n, prefix=[(kv[2 * i].contiguous(), kv[2 * i + 1].contiguous()) for i in range(layers)])
