"""A quantized frozen base (QLoRA): 4-bit NF4 or 8-bit storage of the base's linear weights, in plain PyTorch.

Each frozen ``nn.Linear`` becomes a :class:`QuantizedLinear` that stores its weight as

* ``nf4``: 4-bit NormalFloat codes (Dettmers et al. 2023), two per byte, with one fp32 absmax per block of 64
  weights (4.5 bits per weight);
* ``int8``: symmetric int8 with one fp32 scale per output row (8 bits + a row scale).

The forward pass dequantises one layer's weight at a time, multiplies, and lets it go; the backward pass
dequantises again for the input gradient (the weight is frozen: it needs no gradient and nothing of it is saved).
So memory holds the packed weights plus one layer's fp32 weight at most. It runs on any device and dtype, with
LoRA (or any other adapter) trained on top. Merging into a quantized base dequantises it first.
"""

from __future__ import annotations

import copy
import functools
import gc
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from leantune.errors import LeantuneError
from leantune.models.targets import HEAD_NAMES

QuantKind = Literal["nf4", "int8"]

# The 16 NF4 levels: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero (QLoRA, appendix E).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
BLOCK = 64


def quantize_nf4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes, fp32 absmax per block of 64) of a weight whose size is a multiple of 64."""
    blocks = w.detach().float().reshape(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1).clamp(min=1e-12)
    normed = blocks / absmax[:, None]
    levels = NF4_LEVELS.to(w.device)
    codes = torch.bucketize(normed, (levels[1:] + levels[:-1]) / 2).to(torch.uint8).reshape(-1)
    return (codes[0::2] << 4) | codes[1::2], absmax


@functools.cache
def _byte_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 2): the two NF4 levels each packed byte stands for (one gather per byte instead of shifts + two)."""
    codes = torch.arange(256)
    return torch.stack((NF4_LEVELS[codes >> 4], NF4_LEVELS[codes & 0x0F]), dim=1).to(device=device, dtype=dtype)


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    values = torch.index_select(_byte_table(packed.device, dtype), 0, packed.int()).view(-1, BLOCK)
    return values.mul_(absmax.to(dtype)[:, None]).view(shape)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, fp32 scale per output row)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)[:, None]


class _DequantizedMatmul(torch.autograd.Function):
    """``x @ W.T`` with W dequantised in forward and again in backward; nothing of W is kept in between."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize(grad.dtype), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer whose weight is stored quantized; behaves like ``nn.Linear`` for forward."""

    def __init__(self, linear: nn.Linear, kind: QuantKind) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kind = linear.in_features, linear.out_features, kind
        self.weight_shape = linear.weight.shape
        self.orig_dtype = linear.weight.dtype
        if kind == "nf4":
            packed, absmax = quantize_nf4(linear.weight)
        else:
            packed, absmax = quantize_int8(linear.weight)
        self.register_buffer("qweight", packed)
        self.register_buffer("absmax", absmax)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.orig_dtype
        if self.kind == "nf4":
            return dequantize_nf4(self.qweight, self.absmax, self.weight_shape, dtype)
        return dequantize_int8(self.qweight, self.absmax, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (a fresh tensor: read it, do not assign to it)."""
        return self.dequantize()

    @property
    def device(self) -> torch.device:
        """Where the packed weight lives (read without dequantising; ``orig_dtype`` is its dtype)."""
        return self.qweight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            out = _DequantizedMatmul.apply(x, self)
        else:
            out = F.linear(x, self.dequantize(x.dtype))
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantised weight (the quantisation error stays)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.qweight.device, dtype=self.orig_dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantize())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


def _bnb_linear(linear: nn.Linear, kind: QuantKind) -> nn.Module:
    """The bitsandbytes layer (Linear4bit NF4 / Linear8bitLt) holding ``linear``'s weight, quantized."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise LeantuneError("quantize_backend: bitsandbytes needs the bitsandbytes package (pip install "
                            "bitsandbytes), or use quantize_backend: leantune.") from None
    w = linear.weight.detach()
    has_bias = linear.bias is not None
    if kind == "nf4":
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=w.dtype,
                              quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
    else:
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                threshold=6.0, device="meta")
        q.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    if has_bias:
        q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return q.to(w.device)  # bitsandbytes quantizes when the layer is moved


def is_bnb_layer(module: nn.Module) -> bool:
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt") and type(module).__module__.startswith("bitsandbytes")


def is_quantized_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantizedLinear) or is_bnb_layer(module)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a quantized layer (leantune's or bitsandbytes'), dequantised."""
    if isinstance(module, QuantizedLinear):
        return module.dequantize()
    import bitsandbytes as bnb

    w = module.weight
    if type(module).__name__ == "Linear4bit":
        data, state = w.data, w.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # repacked by bitsandbytes' CPU inference path
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return bnb.functional.dequantize_4bit(data, state).reshape(module.out_features, module.in_features)
    scb = w.SCB if getattr(w, "SCB", None) is not None else module.state.SCB  # moved to .state after a forward
    return w.data.float() * (scb.float()[:, None] / 127.0)


def resolve_backend(backend: str, device: torch.device) -> str:
    """auto: bitsandbytes on CUDA when it is installed (its fused kernels), leantune's portable path otherwise."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is not None:
            return "bitsandbytes"
    return "leantune"


def quantize_model(model: nn.Module, kind: QuantKind, backend: str = "leantune",
                   skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Replace the model's ``nn.Linear`` layers in place by quantized ones (leantune's :class:`QuantizedLinear`, or
    bitsandbytes' layers with ``backend="bitsandbytes"``), except the output / task heads and any module whose
    name contains an entry of ``skip``; returns what was done (layers, bytes before and after)."""
    heads = set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is out_emb or name.split(".")[-1] in (*HEAD_NAMES, "lm_head"):
            heads.add(name)
    count, before, after = 0, 0, 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or name in heads or any(s in name for s in skip):
            continue
        if kind == "nf4" and module.weight.numel() % BLOCK:
            continue  # NF4 blocks need a multiple of 64 weights; such a small layer stays as it is
        q = _bnb_linear(module, kind) if backend == "bitsandbytes" else QuantizedLinear(module, kind)
        model.set_submodule(name, q)
        count += 1
        before += module.weight.numel() * module.weight.element_size()
        stored = [*q.buffers()] if isinstance(q, QuantizedLinear) else [q.weight, *q.buffers()]
        after += sum(t.numel() * t.element_size() for t in stored)
    # The fp32 weights may be views of the checkpoint file, memory-mapped: give the layers that stay their own
    # memory, so the mapping (and the resident pages of the weights just quantized) can go.
    packed = {id(t) for m in model.modules() if is_quantized_layer(m) for t in (*m.buffers(), *m.parameters())}
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu" and id(t) not in packed:
                t.data = t.data.clone()
    gc.collect()
    return {"kind": kind, "backend": backend, "layers": count, "bytes_before": before, "bytes_after": after}


def dequantize_model(model: nn.Module) -> int:
    """Replace every :class:`QuantizedLinear` (also as an adapter's base layer) by a plain ``nn.Linear``."""
    count = 0
    for name, module in list(model.named_modules()):
        if is_quantized_layer(module):
            model.set_submodule(name, _plain_linear(module))
            count += 1
    return count


def _plain_linear(module: nn.Module) -> nn.Linear:
    if isinstance(module, QuantizedLinear):
        return module.to_linear()
    w = dequantized_weight(module)
    dtype = getattr(module, "compute_dtype", None) or torch.float32
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=w.device,
                       dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def is_quantized(model: nn.Module) -> bool:
    return any(is_quantized_layer(m) for m in model.modules())


def quantized_weight_count(model: nn.Module) -> int:
    """Weights of the quantized layers not counted by ``parameters()`` (packed or held in buffers)."""
    extra = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            extra += m.in_features * m.out_features
        elif is_bnb_layer(m):
            extra += m.in_features * m.out_features - m.weight.numel()
    return extra
