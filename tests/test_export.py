"""`leantune export`: merged folders that transformers loads without leantune, vLLM-ready LoRA folders, peft copies,
and the refusals (with their reasons) for what a format cannot express."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_bert, save_tiny_llama, save_tiny_t5

import leantune as lt
from leantune.cli import main as cli_main
from leantune.errors import LeantuneError
from leantune.export import VLLM_RANKS, vllm_problems

TOL_MERGED = 1e-4
TOL_ADAPTER = 1e-5
TEXTS = ["the film was great", "what colour is the dog ?"]
QUESTION, CONTEXT = "what is small", "the red house is big . the blue dog is small ."


# ---------------------------------------------------------------------------------------- run folders by hand


def make_run(root, name, model, task, method="lora", method_args=None, labels=None, quantize="none", pooling="auto"):
    """A finished run folder as `leantune train` leaves it (config.yaml, labels.json, adapter/), with an adapter
    whose every parameter is moved off its initial value (LoRA's B starts at zero)."""
    from leantune.config import validate_config
    from leantune.models.loading import load_tokenizer
    from leantune.models.quantize import quantize_model
    from leantune.tasks import make_task

    run = root / name
    run.mkdir()
    task_args = {"pooling": pooling} if task == "classification" else {}
    if task == "translation":
        task_args.update(source_lang="English", target_lang="German")
    raw = {"model": model, "task": task, "task_args": task_args, "method": method, "method_args": method_args or {},
           "quantize": quantize, "data": {"train": "unused.jsonl"}, "output_dir": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    if labels:
        (run / "labels.json").write_text(json.dumps(labels))
    cfg = validate_config(raw)
    task_obj = make_task(cfg, load_tokenizer(model), model)
    task_obj.load_artifacts(run)
    m = task_obj.build_model(model)
    if quantize != "none":
        quantize_model(m, quantize, "leantune")
    lt.attach(m, cfg.method_args)
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    lt.save_adapter(m, run / "adapter")
    return run


def encode(model_dir, kind):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if kind == "qa":
        return dict(tok([QUESTION, QUESTION], [CONTEXT, "the blue dog"], padding=True, return_tensors="pt"))
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    if kind == "seq2seq":
        enc["decoder_input_ids"] = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    return enc


def outputs_of(model, inputs, kind):
    with torch.no_grad():
        out = model(**inputs)
    return {k: out[k].float() for k in (("start_logits", "end_logits") if kind == "qa" else ("logits",))}


def reference(run, inputs, kind):
    """What the run computes through leantune (base + unmerged adapter)."""
    from leantune.run.loader import load_run

    _, _, model = load_run(run)
    return outputs_of(model, inputs, kind)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-models")
    corpus = TEXTS + [QUESTION, CONTEXT, "der rote hund", "red blue green"]
    return {"tmp": tmp, "bert": save_tiny_bert(tmp / "bert"), "bert_mean": save_tiny_bert(tmp / "bert-st", "mean"),
            "llama": save_tiny_llama(tmp / "llama", corpus), "t5": save_tiny_t5(tmp / "t5", corpus)}


MERGED_CASES = {  # name: (model, task, method, method_args, quantize, kind)
    "classification-lora": ("bert", "classification", "lora", {"r": 4}, "none", "cls"),
    "causal-lora": ("llama", "instruction", "lora", {"r": 4, "alpha": 8}, "none", "clm"),
    "causal-dora": ("llama", "instruction", "dora", {"r": 4}, "none", "clm"),
    "causal-ia3": ("llama", "instruction", "ia3", {}, "none", "clm"),
    "causal-lora-nf4": ("llama", "instruction", "lora", {"r": 4}, "nf4", "clm"),
    "seq2seq-lora": ("t5", "translation", "lora", {"r": 4}, "none", "seq2seq"),
    "extractive-qa-lora": ("bert", "extractive_qa", "lora", {"r": 4}, "none", "qa"),
}

BLOCK_LEANTUNE = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "leantune" or name.startswith("leantune."):
            raise ImportError("leantune is not available here")
sys.meta_path.insert(0, Block())
import torch, transformers
from safetensors.torch import load_file, save_file
for job in json.loads(sys.argv[1]):
    model = getattr(transformers, job["auto"]).from_pretrained(job["dir"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(job["dir"])
    with torch.no_grad():
        out = model(**load_file(job["inputs"]))
    keys = ["start_logits", "end_logits"] if job["kind"] == "qa" else ["logits"]
    save_file({k: out[k].float().contiguous() for k in keys}, job["out"])
    json.dump({"ids": tok("the film was great")["input_ids"], "config": model.config.to_dict()},
              open(job["out"] + ".json", "w"))
assert not [m for m in sys.modules if m.split(".")[0] == "leantune"]
"""


@pytest.fixture(scope="module")
def merged(models):
    """Every merged case exported, then loaded by transformers alone in one isolated subprocess."""
    tmp = models["tmp"]
    results, jobs = {}, []
    for name, (model_key, task, method, args, quantize, kind) in MERGED_CASES.items():
        labels = ["neg", "pos", "neutral"] if task == "classification" else None
        run = make_run(tmp, name, models[model_key], task, method, args, labels, quantize)
        inputs = encode(models[model_key], kind)
        report = lt.export_run(run, "merged", tmp / f"{name}-merged")
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp / f"{name}.inputs"))
        jobs.append({"dir": str(report.out), "auto": report.details["auto_class"], "inputs": str(tmp / f"{name}.inputs"),
                     "out": str(tmp / f"{name}.outputs"), "kind": kind})
        results[name] = {"run": run, "report": report, "expected": reference(run, inputs, kind), "kind": kind,
                         "model": models[model_key]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-I", "-c", BLOCK_LEANTUNE, json.dumps(jobs)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in MERGED_CASES:
        results[name]["got"] = load_file(str(tmp / f"{name}.outputs"))
        results[name]["loaded"] = json.loads((tmp / f"{name}.outputs.json").read_text())
    return results


@pytest.mark.parametrize("name", list(MERGED_CASES))
def test_merged_folder_loads_without_leantune_and_gives_the_adapters_outputs(merged, name):
    case = merged[name]
    for key, expected in case["expected"].items():
        torch.testing.assert_close(case["got"][key], expected, atol=TOL_MERGED, rtol=TOL_MERGED)
    out = case["report"].out
    assert list(out.glob("*.safetensors")) and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    from transformers import AutoTokenizer

    assert case["loaded"]["ids"] == AutoTokenizer.from_pretrained(case["model"])("the film was great")["input_ids"]
    if case["kind"] in ("clm", "seq2seq"):
        assert (out / "generation_config.json").is_file() and case["loaded"]["config"]["use_cache"] is True
    if name == "classification-lora":
        assert case["loaded"]["config"]["id2label"] == {"0": "neg", "1": "pos", "2": "neutral"}
    if name == "causal-lora-nf4":
        assert case["report"].details["dequantized_base"] and "dequantised" in " ".join(case["report"].notes)


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")  # peft's class has a pooler the run did not use
def test_merged_refuses_a_mean_pooled_head_and_says_why(models, tmp_path):
    run = make_run(tmp_path, "pooled", models["bert_mean"], "classification", labels=["neg", "pos"])
    with pytest.raises(LeantuneError, match="mean of the encoder's last hidden states.*--to peft.*No task_args.pooling "
                                            "value gives transformers' own head on a sentence-transformers base"):
        lt.export_run(run, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-*"))
    cls_run = make_run(tmp_path, "cls-pooled", models["bert"], "classification", labels=["neg", "pos"], pooling="cls")
    with pytest.raises(LeantuneError, match="\\[CLS\\] token's last hidden state.*train with task_args.pooling: auto"):
        lt.export_run(cls_run, "merged", tmp_path / "out")
    report = lt.export_run(run, "peft", tmp_path / "peft")  # the adapter is exported, with how to pool
    assert "mean of the encoder's last hidden states" in report.notes[0] and "num_labels=2" in report.usage[0]
    # the note's recipe, with peft and transformers alone, computes what the run computes
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(models["bert_mean"], num_labels=2)
    model = PeftModel.from_pretrained(base, str(report.out)).eval()
    inputs = encode(models["bert_mean"], "cls")
    assert "model.base_model.model.bert(**inputs).last_hidden_state" in report.notes[0]
    with torch.no_grad():
        h = model.base_model.model.bert(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        logits = model.base_model.model.classifier((h * mask).sum(1) / mask.sum(1))
    expected = reference(run, inputs, "cls")["logits"]
    torch.testing.assert_close(logits, expected, atol=TOL_ADAPTER, rtol=TOL_ADAPTER)


@pytest.mark.parametrize("method,args,expected", [
    ("prompt", {"num_virtual_tokens": 3}, "virtual tokens.*--to peft"),
    ("prefix", {"num_virtual_tokens": 3}, "key/value prefixes.*--to peft"),
    ("bottleneck", {}, "add layers.*leantune"),
])
def test_merged_refuses_methods_that_cannot_merge(models, tmp_path, method, args, expected):
    run = make_run(tmp_path, method, models["llama"], "instruction", method, args)
    with pytest.raises(LeantuneError, match=expected):
        lt.export_run(run, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- peft


def _peft_outputs(base_dir, adapter_dir, inputs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    return outputs_of(model, inputs, "clm")["logits"]


@pytest.mark.parametrize("method,args", [("lora", {"r": 4}), ("prompt", {"num_virtual_tokens": 3})])
def test_peft_export_loads_in_peft_with_the_same_outputs(models, tmp_path, method, args):
    run = make_run(tmp_path, method, models["llama"], "instruction", method, args)
    report = lt.export_run(run, "peft", tmp_path / "peft")
    assert "PeftModel.from_pretrained" in report.usage[0]
    inputs = encode(models["llama"], "clm")
    got = _peft_outputs(models["llama"], report.out, inputs)
    torch.testing.assert_close(got, reference(run, inputs, "clm")["logits"], atol=TOL_ADAPTER, rtol=TOL_ADAPTER)


@pytest.mark.parametrize("method,hint", [("bottleneck", "leantune \\(predict"), ("head", "--to merged")])
def test_peft_export_refuses_leantune_only_methods(models, tmp_path, method, hint):
    run = make_run(tmp_path, method, models["bert"], "classification", method, labels=["a", "b"])
    with pytest.raises(LeantuneError, match=f"HF peft cannot load .*{hint}"):
        lt.export_run(run, "peft", tmp_path / "out")


# ---------------------------------------------------------------------------------------- vLLM


@pytest.mark.parametrize("args,rank,alpha", [
    ({"r": 4, "alpha": 8}, 8, 16),
    ({"r": 12, "alpha": 16, "use_rslora": True}, 16, 16 * (16 / 12) ** 0.5),
    ({"r": 8, "alpha": 16}, 8, 16),
])
def test_vllm_export_pads_the_rank_and_keeps_the_function(models, tmp_path, args, rank, alpha):
    run = make_run(tmp_path, "chat-run", models["llama"], "instruction", "lora", args)
    report = lt.export_run(run, "vllm", tmp_path / "vllm")
    config = json.loads((report.out / "adapter_config.json").read_text())
    assert config["r"] == rank and config["r"] in VLLM_RANKS and config["lora_alpha"] == pytest.approx(alpha)
    assert not config["modules_to_save"] and not config["use_dora"]
    assert vllm_problems(config, load_file(str(report.out / "adapter_model.safetensors"))) == []
    assert report.usage[0] == (f"vllm serve {models['llama']} --enable-lora --max-lora-rank {rank} "
                               f"--lora-modules chat-run={report.out}")
    inputs = encode(models["llama"], "clm")
    padded = _peft_outputs(models["llama"], report.out, inputs)
    original = _peft_outputs(models["llama"], run / "adapter", inputs)
    torch.testing.assert_close(padded, original, atol=TOL_ADAPTER, rtol=TOL_ADAPTER)
    torch.testing.assert_close(padded, reference(run, inputs, "clm")["logits"], atol=TOL_ADAPTER, rtol=TOL_ADAPTER)


@pytest.mark.parametrize("model,task,method,expected", [
    ("llama", "instruction", "dora", "DoRA.*--to merged"),
    ("llama", "instruction", "ia3", "vLLM serves LoRA adapters only.*--to merged"),
    ("bert", "classification", "lora", "modules_to_save \\['classifier'\\].*SEQ_CLS.*--to merged"),
])
def test_vllm_export_refuses_what_vllm_cannot_load_exactly(models, tmp_path, model, task, method, expected):
    labels = ["a", "b"] if task == "classification" else None
    run = make_run(tmp_path, "run", models[model], task, method, labels=labels)
    with pytest.raises(LeantuneError, match=expected):
        lt.export_run(run, "vllm", tmp_path / "out")


def test_vllm_rules_name_every_problem():
    a, b = torch.zeros(600, 8), torch.zeros(8, 600)
    raw = {"peft_type": "LORA", "r": 600, "lora_alpha": 16, "bias": "all", "rank_pattern": {"q_proj": 4},
           "task_type": "CAUSAL_LM"}
    tensors = {"base_model.model.q.lora_A.weight": a, "base_model.model.q.lora_B.weight": b,
               "base_model.model.q.bias": torch.zeros(8), "base_model.model.emb.lora_embedding_A": torch.zeros(600, 9)}
    problems = " | ".join(vllm_problems(raw, tensors))
    for words in ("bias='all'", "rank_pattern", "embedding layer(s) base_model.model.emb", "base_model.model.q.bias",
                  "above vLLM's largest --max-lora-rank (512)"):
        assert words in problems


# ---------------------------------------------------------------------------------------- CLI, errors, output folder


@pytest.fixture()
def lora_run(models, tmp_path):
    return make_run(tmp_path, "my-run", models["llama"], "instruction", "lora", {"r": 4})


def test_cli_prints_the_vllm_serve_flags(lora_run, tmp_path, capsys):
    assert cli_main(["export", str(lora_run), "--to", "vllm", "--out", str(tmp_path / "v"), "--name", "tutor"]) == 0
    out = capsys.readouterr().out
    assert f"--enable-lora --max-lora-rank 8 --lora-modules tutor={tmp_path / 'v'}" in out
    assert "rank 4 padded with zeros to 8" in out
    info = json.loads((tmp_path / "v" / "leantune_export.json").read_text())
    assert info["format"] == "vllm" and info["max_lora_rank"] == 8
    # a bare adapter folder exports too (e.g. one converted with --to lora)
    assert cli_main(["export", str(lora_run / "adapter"), "--to", "vllm", "--out", str(tmp_path / "v2")]) == 0
    assert f"--lora-modules my-run={tmp_path / 'v2'}" in capsys.readouterr().out


def test_cli_errors_are_one_line(lora_run, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing"), "--to", "merged"], "run folder not found"),
        ([str(tmp_path), "--to", "peft"], "neither a leantune run folder"),
        ([str(lora_run / "adapter"), "--to", "merged"], "--to merged needs the run folder"),
        ([str(lora_run), "--to", "peft", "--rank", "4"], "--rank is for --to lora"),
        ([str(lora_run / "adapter"), "--to", "lora", "--rank", "4"], "--to lora needs the run folder"),
        ([str(lora_run), "--to", "peft", "--out", str(lora_run), "--overwrite"], "would replace"),
        ([str(lora_run), "--to", "peft", "--out", str(lora_run / "config.yaml")], "exists and is a file"),
        ([str(lora_run), "--to", "peft", "--out", str(lora_run / "config.yaml" / "x")], "cannot write there"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "o")]
        assert cli_main(["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    (lora_run / "adapter" / "adapter_config.json").unlink()
    assert cli_main(["export", str(lora_run), "--to", "vllm", "--out", str(tmp_path / "o")]) == 2
    assert "has no trained adapter" in capsys.readouterr().err
    assert not list(tmp_path.glob(".o.export-*")) and not (tmp_path / "o").exists()


def test_existing_output_is_replaced_only_with_overwrite(lora_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LeantuneError, match="not empty; pass --overwrite"):
        lt.export_run(lora_run, "peft", out)
    assert (out / "keep.txt").read_text() == "mine"
    lt.export_run(lora_run, "peft", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("method,args", [("dora", {"r": 4}), ("lokr", {"r": 2})])
def test_to_lora_converts_the_run_and_eval_takes_the_converted_adapter(models, method, args, tmp_path, capsys):
    run = make_run(tmp_path, f"{method}-run", models["llama"], "instruction", method, args)
    with pytest.raises(LeantuneError, match="needs --rank R"):
        lt.export_run(run, "lora", tmp_path / "l")
    report = lt.export_run(run, "lora", tmp_path / "l", rank=64)  # at full rank the conversion is exact
    saved = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 64 and not saved.get("use_dora")
    assert report.details["relative_error"] < 1e-5 and "-> LoRA rank 64" in report.notes[0]
    from leantune.run.loader import load_run

    inputs = encode(models["llama"], "clm")
    expected = reference(run, inputs, "clm")["logits"]
    _, _, converted = load_run(run, tmp_path / "l")
    torch.testing.assert_close(outputs_of(converted, inputs, "clm")["logits"], expected, atol=1e-4, rtol=1e-4)
    # the converted folder exports to vLLM in turn
    assert cli_main(["export", str(tmp_path / "l"), "--to", "vllm", "--out", str(tmp_path / "v")]) == 0
    assert "--max-lora-rank 64" in capsys.readouterr().out



@pytest.mark.slow
@pytest.mark.parametrize("method,args", [("dora", {"r": 2, "alpha": 4}), ("lokr", {"r": 2})])
def test_cli_export_to_lora_of_a_trained_run_and_eval_of_it(models, method, args, tmp_path, capsys):
    """A tiny classification run trained by leantune, converted by `leantune export --to lora` (the real to_lora):
    at full rank `leantune eval --adapter` scores the converted LoRA as the run itself; at rank 1 the update is
    approximated and the report says by how much."""
    from tiny_models import sentiment_rows, write_csv

    from leantune.config import validate_config
    from leantune.train.loop import fine_tune

    data = write_csv(tmp_path / "sentiment.csv", sentiment_rows(96))
    run = tmp_path / f"{method}-run"
    fine_tune(validate_config({
        "model": models["bert_mean"], "task": "classification", "method": method, "method_args": args,
        "data": {"train": data, "eval_fraction": 0.25},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 5e-2, "max_length": 32, "eval_before": False,
                  "num_threads": 1, "seed": 1},
        "output_dir": str(run)}), quiet=True)

    def evaluate(*extra: str) -> dict:
        capsys.readouterr()
        assert cli_main(["eval", str(run), "--data", data, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    own = evaluate()
    assert cli_main(["export", str(run), "--to", "lora", "--rank", "64", "--out", str(tmp_path / "full")]) == 0
    assert "relative error of the update" in capsys.readouterr().out
    converted = evaluate("--adapter", str(tmp_path / "full"))
    assert converted["accuracy"] == own["accuracy"]
    assert converted["eval_loss"] == pytest.approx(own["eval_loss"], abs=1e-5)
    low = lt.export_run(run, "lora", tmp_path / "r1", rank=1)
    assert low.details["relative_error"] > 1e-3  # the trained update has rank above 1 in some layer
    assert json.loads((tmp_path / "r1" / "adapter_config.json").read_text())["r"] == 1
    assert set(evaluate("--adapter", str(tmp_path / "r1"))) == set(own)
