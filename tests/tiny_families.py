"""One tiny random model (built from its config class, no downloads) of every architecture family leantune has
default targets for: hidden size 32, two layers (one each side for encoder-decoders), four heads, a small vocabulary,
four experts where the family has them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf

VOCAB = 96
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DECODER = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "max_position_embeddings": 64, **IDS}
LLAMA_KV = {**DECODER, "num_key_value_heads": 2}
ENCODER = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "max_position_embeddings": 64, "num_labels": 3}
SEQ2SEQ = {"vocab_size": VOCAB, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
           "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
           "decoder_start_token_id": 2, "forced_eos_token_id": None, **IDS}
MOE = {"num_experts_per_tok": 2}

# family: (model class, config class, config keyword arguments)
FAMILIES: dict[str, tuple[type, type, dict]] = {
    "llama": (tf.LlamaForCausalLM, tf.LlamaConfig, LLAMA_KV),
    "mistral": (tf.MistralForCausalLM, tf.MistralConfig, LLAMA_KV),
    "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig, {**LLAMA_KV, **MOE, "num_local_experts": 4}),
    "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config, LLAMA_KV),
    "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3Config, {**LLAMA_KV, "head_dim": 8}),
    "qwen2_moe": (tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig,  # layer 1 dense: both kinds of MLP
                  {**LLAMA_KV, **MOE, "num_experts": 4, "moe_intermediate_size": 16,
                   "shared_expert_intermediate_size": 32, "mlp_only_layers": [1]}),
    "qwen3_moe": (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig,
                  {**LLAMA_KV, **MOE, "num_experts": 4, "moe_intermediate_size": 16, "head_dim": 8}),
    "gemma": (tf.GemmaForCausalLM, tf.GemmaConfig, {**LLAMA_KV, "head_dim": 8}),
    "gemma2": (tf.Gemma2ForCausalLM, tf.Gemma2Config, {**LLAMA_KV, "head_dim": 8}),
    "gemma3_text": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig, {**LLAMA_KV, "head_dim": 8, "sliding_window": 16}),
    "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config, LLAMA_KV),
    "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config,
             {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, **IDS}),
    "gpt_neox": (tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig, DECODER),
    "falcon": (tf.FalconForCausalLM, tf.FalconConfig,
               {k: v for k, v in DECODER.items() if k != "intermediate_size"}),
    "opt": (tf.OPTForCausalLM, tf.OPTConfig,
            {**{k: v for k, v in DECODER.items() if k != "intermediate_size"}, "ffn_dim": 64,
             "word_embed_proj_dim": 32}),
    "bloom": (tf.BloomForCausalLM, tf.BloomConfig,
              {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4, **IDS}),
    "t5": (tf.T5ForConditionalGeneration, tf.T5Config,
           {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4,
            "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}),
    "t5-gated": (tf.T5ForConditionalGeneration, tf.T5Config,  # wi_0 / wi_1 (T5 v1.1, mT5)
                 {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4,
                  "feed_forward_proj": "gated-gelu", "decoder_start_token_id": 0, "pad_token_id": 0,
                  "eos_token_id": 1}),
    "bart": (tf.BartForConditionalGeneration, tf.BartConfig, SEQ2SEQ),
    "marian": (tf.MarianMTModel, tf.MarianConfig, SEQ2SEQ),
    "bert": (tf.BertForSequenceClassification, tf.BertConfig, ENCODER),
    "roberta": (tf.RobertaForSequenceClassification, tf.RobertaConfig, {**ENCODER, "pad_token_id": 1}),
    "xlm-roberta": (tf.XLMRobertaForSequenceClassification, tf.XLMRobertaConfig, {**ENCODER, "pad_token_id": 1}),
    "electra": (tf.ElectraForSequenceClassification, tf.ElectraConfig, {**ENCODER, "embedding_size": 16}),
    "deberta-v2": (tf.DebertaV2ForSequenceClassification, tf.DebertaV2Config,  # with its position projections
                   {**ENCODER, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "share_att_key": False,
                    "max_relative_positions": 16, "position_buckets": 8}),
    "distilbert": (tf.DistilBertForSequenceClassification, tf.DistilBertConfig,
                   {"vocab_size": VOCAB, "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 4,
                    "max_position_embeddings": 64, "num_labels": 3}),
    "mpnet": (tf.MPNetForSequenceClassification, tf.MPNetConfig, {**ENCODER, "pad_token_id": 1}),
    "modernbert": (tf.ModernBertForSequenceClassification, tf.ModernBertConfig,
                   {**ENCODER, "local_attention": 16, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                    "cls_token_id": 1, "sep_token_id": 2}),
}


def tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """A random tiny model of ``family``, in evaluation mode."""
    model_cls, config_cls, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**kwargs)).eval()


def factory(family: str) -> Callable[[], torch.nn.Module]:
    return lambda: tiny(family)


def inputs(family: str, seed: int = 1, batch: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    """Token ids (a padded row) and labels fitting the family's model: classes for encoders, the ids for LMs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    model_cls = FAMILIES[family][0]
    if model_cls.__name__.endswith("ForSequenceClassification"):
        out["labels"] = torch.randint(0, 3, (batch,), generator=g)
    elif model_cls.__name__.endswith(("ForConditionalGeneration", "MTModel")):
        out["labels"] = torch.randint(3, VOCAB, (batch, 4), generator=g)
    else:
        out["labels"] = ids.masked_fill(mask == 0, -100)
    return out
