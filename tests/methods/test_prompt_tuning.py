"""Prompt tuning: virtual tokens in front, mask and labels extended, text initialisation."""

import pytest
import torch
from tiny_models import VOCAB, batch, bert, llama, t5

import leantune as lt


def _tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {0: "[UNK]", 10: "classify", 11: "the", 12: "review"}
    vocab = {words.get(i, f"w{i}"): i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    return str(tmp_path)


def test_logits_and_loss_cover_the_virtual_tokens():
    model = lt.attach(llama(), lt.PromptTuningConfig(num_virtual_tokens=5))
    inputs = batch("llama")
    out = model(**inputs)
    assert out.logits.shape == (2, 7 + 5, VOCAB)
    assert torch.isfinite(out.loss)
    assert lt.trainable_parameters(model)[0] == 5 * 32


def test_vocab_init_copies_real_embeddings():
    model = lt.attach(bert(), lt.PromptTuningConfig(num_virtual_tokens=3))
    prompts = model.prompt_encoder["default"].embedding.weight
    words = model.get_input_embeddings().weight
    for row in prompts:
        assert any(torch.equal(row, w) for w in words)


def test_text_init(tmp_path):
    folder = _tokenizer_folder(tmp_path)
    cfg = lt.PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="classify the review",
                                tokenizer_name_or_path=folder)
    model = lt.attach(llama(), cfg)
    words = model.get_input_embeddings().weight
    expected = words[torch.tensor([10, 11, 12, 10, 11])]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)
    with pytest.raises(lt.LeantuneError, match="init_text"):
        lt.attach(llama(), lt.PromptTuningConfig(init="text", tokenizer_name_or_path=folder))


def test_seq2seq_prompts_go_to_the_encoder():
    model = lt.attach(t5(), lt.PromptTuningConfig(num_virtual_tokens=3))
    inputs = batch("t5")
    out = model(**inputs)
    assert out.logits.shape[1] == inputs["labels"].shape[1]
    assert out.encoder_last_hidden_state.shape[1] == 7 + 3


def test_disable_gives_the_base():
    inputs = batch("bert")
    model = lt.attach(bert(), lt.PromptTuningConfig(num_virtual_tokens=3))
    with lt.disable_adapters(model), torch.no_grad():
        torch.testing.assert_close(model(input_ids=inputs["input_ids"]).logits, bert()(input_ids=inputs["input_ids"]).logits)
