"""Decoding never hands out half a character: a Chinese character is 3 UTF-8 bytes, often 3 byte-level tokens."""

from __future__ import annotations

import pytest
import torch

from leantune.detokenize import REPLACEMENT, StreamDecoder, complete_text


@pytest.fixture(scope="module")
def byte_tokenizer():
    from tiny_models import _byte_bpe
    from transformers import PreTrainedTokenizerFast

    # trained on English only: every Chinese character is spelled with its UTF-8 bytes, one token each
    return PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(["hello world, the cat sat"] * 20, ["<pad>", "<eos>"]),
                                   pad_token="<pad>", eos_token="<eos>")


def test_a_stream_holds_back_incomplete_characters(byte_tokenizer):
    text = "hello 你好，world 丂!"
    ids = byte_tokenizer(text)["input_ids"]
    assert len(ids) > len(text)  # byte tokens
    stream = StreamDecoder(byte_tokenizer)
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert all(REPLACEMENT not in p for p in pieces)
    assert pieces.count("") >= 2 * 4  # 你 好 ， 丂: two of their three bytes each are held back
    # several tokens at once, and a stream cut inside a character: the incomplete bytes are dropped at the end
    cut = ids[:-2]  # "丂" loses its last byte (and "!")
    stream = StreamDecoder(byte_tokenizer)
    assert stream.push(cut[:5]) + stream.push(cut[5:]) + stream.finish() == "hello 你好，world "
    assert complete_text(byte_tokenizer, cut) == "hello 你好，world "
    assert byte_tokenizer.decode(cut).endswith(REPLACEMENT)  # what plain decoding would have handed out


def test_batched_generation_returns_whole_characters(byte_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from leantune.generate import generate

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(byte_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1)).eval()
    prompts = ["hello", "the cat 你", "world"]
    for n in range(1, 8):  # random weights: every length cuts somewhere, often inside a multi-byte sequence
        outs = generate(model, byte_tokenizer, prompts, max_new_tokens=n, batch_size=3)
        assert all(not o.endswith(REPLACEMENT) and o.encode("utf-8").decode("utf-8") == o for o in outs)
        assert outs == [generate(model, byte_tokenizer, [p], max_new_tokens=n)[0] for p in prompts]
