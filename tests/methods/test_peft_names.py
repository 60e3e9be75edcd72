"""peft's names and per-module settings: ``lora_alpha`` and its kind accepted wherever a method's config is
written, and rank_pattern, alpha_pattern and layers_to_transform computing what peft computes, both ways."""

from __future__ import annotations

import json

import pytest
from peft import LoKrConfig as PeftLoKr
from peft import LoraConfig as PeftLora
from peft import OFTConfig as PeftOFT
from peft import VeraConfig as PeftVera
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from peft_oracle import parity_tests
from pydantic import ValidationError
from tiny_models import FACTORIES

import leantune as lt
from leantune.config import dump_config, load_config, validate_config
from leantune.errors import LeantuneError
from leantune.methods.targeting import keep_layers, pattern_value

BASE = {"model": "m", "data": {"train": "t.csv"}}
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]


def test_lora_config_takes_peft_names():
    cfg = lt.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, init_lora_weights="gaussian")
    assert (cfg.alpha, cfg.dropout, cfg.init) == (16, 0.1, "gaussian")
    assert lt.LoraConfig(init_lora_weights=False).init == "random"
    assert lt.LoraConfig(init_lora_weights=True).init == "standard"
    assert lt.LoraConfig(init_lora_weights="pissa").init == "pissa"
    assert "lora_alpha" not in lt.LoraConfig(lora_alpha=4).model_dump()  # one name written: leantune's


def test_peft_names_refused_when_ambiguous_or_unsupported():
    with pytest.raises(ValidationError, match="'alpha' and 'lora_alpha' .* both given"):
        lt.LoraConfig(alpha=8, lora_alpha=16)
    with pytest.raises(ValidationError, match=r"init_lora_weights='eva' is not supported.*'gaussian', 'pissa'"):
        lt.LoraConfig(init_lora_weights="eva")


def test_prompt_tuning_takes_peft_names():
    cfg = lt.PromptTuningConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text="hello")
    assert (cfg.init, cfg.init_text) == ("text", "hello")


def test_run_config_and_compare_take_peft_names(tmp_path):
    cfg = validate_config({**BASE, "method_args": {"r": 4, "lora_alpha": 16, "lora_dropout": 0.05}})
    assert (cfg.method_args.alpha, cfg.method_args.dropout) == (16, 0.05)
    dump_config(cfg, tmp_path / "config.yaml")  # the resolved config keeps leantune's names and reads back
    assert "lora_alpha" not in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml") == cfg
    assert load_config(tmp_path / "config.yaml", ["method_args.lora_alpha=4"]).method_args.alpha == 4
    compared = validate_config({**BASE, "compare": {"method_args": {"lora": {"lora_alpha": 4}, "dora": {"r": 2}}}})
    assert compared.compare.method_args["lora"] == {"lora_alpha": 4}
    with pytest.raises(LeantuneError, match="method_args of lora: .*both given"):
        validate_config({**BASE, "compare": {"method_args": {"lora": {"alpha": 4, "lora_alpha": 4}}}})
    with pytest.raises(LeantuneError, match=r"unknown key 'method_args.lora_rank'; valid keys of method lora: r, "
                                            r"alpha, .*lora_alpha \(= alpha\)"):
        validate_config({**BASE, "method_args": {"lora_rank": 8}})


def test_layer_selection_is_checked_as_peft_checks_it():
    with pytest.raises(ValidationError, match="layers_pattern applies with layers_to_transform only"):
        lt.LoraConfig(layers_pattern="layers")
    with pytest.raises(ValidationError, match="layers_to_transform needs target_modules as a list"):
        lt.LoraConfig(target_modules=".*q_proj", layers_to_transform=[0])
    with pytest.raises(ValidationError, match=r"key 'q_proj\(' is not a regular expression"):
        lt.LoraConfig(rank_pattern={"q_proj(": 2})
    with pytest.raises(ValidationError, match="rank_pattern/alpha_pattern is not supported"):
        lt.LoraConfig(init="pissa", rank_pattern={"q_proj": 2})
    with pytest.raises(LeantuneError, match=r"layers_to_transform=\[7\].*leaves no target; .*layers \[0, 1\]"):
        lt.attach(FACTORIES["llama"](), lt.LoraConfig(target_modules=["q_proj"], layers_to_transform=[7]))


def test_patterns_give_each_module_its_rank_and_scale(tmp_path):
    cfg = lt.LoraConfig(r=4, alpha=8, target_modules=LLAMA_TARGETS, rank_pattern={"v_proj": 2, r"layers\.1\..*q_proj": 6},
                        alpha_pattern={"down_proj": 3}, layers_to_transform=[0, 1], layers_pattern="layers")
    model = lt.attach(FACTORIES["llama"](), cfg)
    layers = model.model.layers
    assert layers[0].self_attn.q_proj.lora_A["default"].out_features == 4
    assert layers[1].self_attn.q_proj.lora_A["default"].out_features == 6
    assert layers[0].self_attn.v_proj.lora_B["default"].in_features == 2
    assert layers[0].mlp.down_proj.scaling["default"] == 3 / 4
    assert layers[0].self_attn.q_proj.scaling["default"] == 8 / 4
    lt.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {"v_proj": 2, r"layers\.1\..*q_proj": 6}
    assert saved["alpha_pattern"] == {"down_proj": 3}
    assert (saved["layers_to_transform"], saved["layers_pattern"]) == ([0, 1], "layers")


NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj", "transformer.h.3.attn.c_attn",
         "model.layers.2.block_sparse_moe.experts.5.w1", "encoder.block.1.layer.0.SelfAttention.q", "lm_head",
         "model.embed_tokens", "model.decoder.layers.4.encoder_attn.k_proj"]


@pytest.mark.parametrize("pattern", [None, "layers", "h", ["block", "layers"]])
def test_layer_matching_is_peft_matching(pattern):
    leaves = sorted({n.rsplit(".", 1)[-1] for n in NAMES})
    for layers in ([0, 2, 4], 3, [1, 11]):
        ours = keep_layers_or_none(NAMES, leaves, layers, pattern)
        peft_cfg = PeftLora(target_modules=leaves, layers_to_transform=layers, layers_pattern=pattern)
        theirs = [n for n in NAMES if check_target_module_exists(peft_cfg, n)]
        assert ours == theirs, (layers, pattern)


def test_pattern_keys_are_peft_pattern_keys():
    patterns = {"q_proj": 1, r"layers\.1\d\..*": 2, "mlp.down_proj": 3, "^model.embed_tokens": 4, "w1": 5}
    for name in NAMES:
        key = get_pattern_key(list(patterns), name)
        assert pattern_value(patterns, name, 0) == patterns.get(key, 0), name


def keep_layers_or_none(names, target, layers, pattern):
    try:
        return keep_layers(names, target, layers, pattern, "test")
    except LeantuneError:
        return []


def test_layers_to_transform_adapts_only_those_layers():
    model = lt.attach(FACTORIES["gpt2"](), lt.LoraConfig(target_modules=["c_attn"], layers_to_transform=1))
    adapted = [n for n, m in model.named_modules() if n.endswith("c_attn") and hasattr(m, "lora_A")]
    assert adapted == ["transformer.h.1.attn.c_attn"]


# (case id, model, leantune config, the same adapter as a peft config)
CASES = [
    ("patterns-llama", "llama",
     lt.LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS,
                   rank_pattern={"v_proj": 2, r"layers\.1\..*q_proj": 6}, alpha_pattern={"down_proj": 3}),
     PeftLora(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS,
              rank_pattern={"v_proj": 2, r"layers\.1\..*q_proj": 6}, alpha_pattern={"down_proj": 3})),
    ("patterns-rslora-llama", "llama",
     lt.LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=LLAMA_TARGETS, rank_pattern={"q_proj": 8},
                   alpha_pattern={"model.layers.0.mlp.down_proj": 2}),
     PeftLora(r=4, lora_alpha=8, use_rslora=True, target_modules=LLAMA_TARGETS, rank_pattern={"q_proj": 8},
              alpha_pattern={"model.layers.0.mlp.down_proj": 2})),
    ("layers-llama", "llama",
     lt.LoraConfig(r=4, target_modules=LLAMA_TARGETS, layers_to_transform=[1], layers_pattern="layers",
                   rank_pattern={"down_proj": 2}),
     PeftLora(r=4, lora_alpha=16, target_modules=LLAMA_TARGETS, layers_to_transform=[1], layers_pattern="layers",
              rank_pattern={"down_proj": 2})),
    ("layers-gpt2", "gpt2",
     lt.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], layers_to_transform=0),
     PeftLora(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], layers_to_transform=0, fan_in_fan_out=True)),
]

test_patterns_saved_by_leantune_load_in_peft, test_patterns_saved_by_peft_load_in_leantune = parity_tests(CASES)

# LoKr (rank_pattern, alpha_pattern), OFT and VeRA (layers_to_transform) as peft has them
OTHER_CASES = [
    ("lokr-patterns-layers", "llama",
     lt.LoKrConfig(r=2, alpha=4, target_modules=LLAMA_TARGETS, rank_pattern={"v_proj": 1}, alpha_pattern={"down_proj": 2},
                   layers_to_transform=[1]),
     PeftLoKr(r=2, alpha=4, target_modules=LLAMA_TARGETS, rank_pattern={"v_proj": 1}, alpha_pattern={"down_proj": 2},
              layers_to_transform=[1])),
    ("oft-layers", "llama",
     lt.OFTConfig(oft_block_size=8, target_modules=LLAMA_TARGETS, layers_to_transform=0, layers_pattern="layers"),
     PeftOFT(oft_block_size=8, target_modules=LLAMA_TARGETS, layers_to_transform=0, layers_pattern="layers")),
    ("vera-layers-gpt2", "gpt2", lt.VeraConfig(r=16, target_modules=["c_attn", "c_fc"], layers_to_transform=[1]),
     PeftVera(r=16, target_modules=["c_attn", "c_fc"], layers_to_transform=[1], fan_in_fan_out=True)),
]

test_others_saved_by_leantune_load_in_peft, test_others_saved_by_peft_load_in_leantune = parity_tests(OTHER_CASES)
