"""Tiny randomly initialised transformers models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 96


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def llama_cls(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)
    return LlamaForSequenceClassification(cfg).eval()


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_labels=3, max_position_embeddings=128)
    return BertForSequenceClassification(cfg).eval()


def t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


FACTORIES = {"llama": llama, "gpt2": gpt2, "bert": bert, "t5": t5, "llama_cls": llama_cls}


def batch(model_name: str, seed: int = 1, batch_size: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    """Inputs with a padded row and labels fitting the model's task."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if model_name in ("bert", "llama_cls"):
        out["labels"] = torch.randint(0, 3, (batch_size,), generator=g)
    elif model_name == "t5":
        out["labels"] = torch.randint(3, VOCAB, (batch_size, 5), generator=g)
        out["decoder_input_ids"] = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), out["labels"][:, :-1]], 1)
    else:
        labels = ids.clone()
        labels[mask == 0] = -100
        out["labels"] = labels
    return out


def output_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a forward pass (without labels)."""
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def training_step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, every parameter's gradient) of one causal-LM training forward and backward on ``ids``."""
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(lean: tuple, plain: tuple) -> None:
    """Two :func:`training_step` results agree: logits and every gradient."""
    torch.testing.assert_close(lean[0], plain[0])
    assert lean[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(lean[1][name], grad, msg=name)


def randomize_(params) -> None:
    """Give adapter parameters non-trivial values (LoRA's B starts at zero, which would make every test pass)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() <= 2 and p.shape[-1] == 1 else 0.0))


# ------------------------------------------------------------------ local model folders for end-to-end tests

WORDS = ("the a movie film food service room book was is very really quite great good lovely excellent superb "
         "bad awful terrible poor boring and but not i it this").split()
POSITIVE = ["great", "good", "lovely", "excellent", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring"]


def save_tiny_bert(folder, pooling: str | None = None, extra_vocab: tuple[str, ...] = ()) -> str:
    """A tiny random BERT with a real WordPiece tokenizer in ``folder`` (optionally a sentence-transformers one;
    ``extra_vocab``: more tokens, e.g. Chinese characters, which BERT's tokenizer splits one by one)."""
    import json
    from pathlib import Path

    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *extra_vocab]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    if pooling:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}))
    return str(folder)


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic labelled sentences: the label is carried by one sentiment word among neutral ones."""
    import random

    rng = random.Random(seed)
    subjects = ["movie", "film", "food", "service", "room", "book"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        filler = " ".join(rng.choice(["very", "really", "quite", "i", "it", "and"]) for _ in range(rng.randint(0, 6)))
        rows.append({"text": f"the {rng.choice(subjects)} was {filler} {word}".replace("  ", " "), "label": label})
    return rows


def write_csv(path, rows) -> str:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_bpe(corpus: list[str], specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def save_tiny_llama(folder, corpus: list[str], chat_template: bool = True) -> str:
    """A tiny random Llama with a byte-level BPE tokenizer trained on ``corpus`` (and a ChatML template)."""
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(corpus, specials), pad_token="<pad>",
                                  eos_token="<|im_end|>", bos_token=None)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def save_tiny_t5(folder, corpus: list[str]) -> str:
    """A tiny random T5 with a byte-level BPE tokenizer (pad 0, eos 1)."""
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(corpus, ["<pad>", "</s>"]), pad_token="<pad>",
                                  eos_token="</s>")
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return str(folder)


def gguf_writer(path, arch: str, config):
    """A ``gguf.GGUFWriter`` for llama.cpp architecture ``arch`` holding the shape keys every such file has, taken
    from a transformers ``config``; the caller adds the rest and :func:`close_gguf` writes it."""
    from gguf import GGUFWriter

    w = GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    return w


def close_gguf(w) -> None:
    """Write the header, metadata and tensors of a GGUF writer and close its file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
