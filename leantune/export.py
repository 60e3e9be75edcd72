"""``leantune export``: a finished run's model or adapter in the formats other tools load.

- ``merged``: the adapter folded into the base, saved as a plain transformers folder (safetensors, config,
  tokenizer, generation config) that ``AutoModelFor...from_pretrained`` loads without leantune.
- ``vllm``: a LoRA adapter folder that vLLM's loader accepts (its ``PEFTHelper`` and weight-name rules); a rank
  vLLM has no ``--max-lora-rank`` for is padded with zeros to the next one, which computes the same function.
- ``peft``: the adapter as HF peft loads it.
- ``lora``: another method converted to a plain LoRA of a given rank (``leantune.to_lora``).

The output folder is written beside its destination and renamed into place at the end: a failed export leaves
nothing behind, and an existing folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from leantune.adapters import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config
from leantune.convert import CONVERTIBLE, to_lora
from leantune.errors import LeantuneError
from leantune.files import fsync_dir
from leantune.run.layout import ADAPTER_DIR, is_run_folder

if TYPE_CHECKING:
    from leantune.tasks import Task

FORMATS = ("merged", "vllm", "peft", "lora")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank`` (its LoRAConfig.max_lora_rank); an adapter's r must not exceed
the one the server was started with."""
PEFT_LOADABLE = ("LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING", "LOKR", "OFT", "VERA")
INFO_NAME = "leantune_export.json"
AUTO_CLASSES = {  # for a bare adapter folder (a run's task names its own class)
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "TOKEN_CLS": "AutoModelForTokenClassification",
}


@dataclass
class ExportReport:
    """What an export wrote, and what the user should know about it."""

    format: str
    out: Path
    summary: str
    notes: list[str] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)
    """How to load or serve the result (code or command lines)."""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [self.summary, *(f"note: {n}" for n in self.notes)]
        if self.usage:
            lines += ["use it with:", *(f"  {u}" for u in self.usage)]
        return "\n".join(lines)


@dataclass
class Source:
    """The run folder (or bare adapter folder) being exported."""

    path: Path
    adapter: Path
    run: Path | None
    raw: dict[str, Any]  # adapter_config.json

    @property
    def peft_type(self) -> str:
        return self.raw.get("peft_type") or "?"

    @property
    def method_label(self) -> str:
        if self.peft_type == "LORA":
            return "DoRA" if self.raw.get("use_dora") else "LoRA"
        return {"PROMPT_TUNING": "prompt tuning", "PREFIX_TUNING": "prefix tuning", "BOTTLENECK": "bottleneck",
                "BITFIT": "BitFit", "HEAD_ONLY": "head-only", "FULL": "full fine-tuning", "LOKR": "LoKr",
                "VERA": "VeRA"}.get(self.peft_type,
                                                                                             self.peft_type)

    @property
    def name(self) -> str:
        """The run folder's name (also for its adapter/ folder given directly)."""
        folder = self.path.resolve()
        return folder.parent.name if self.run is None and folder.name == ADAPTER_DIR else folder.name

    def run_config(self) -> Any:
        """The run's validated config (None for a bare adapter folder)."""
        if self.run is None:
            return None
        from leantune.run.loader import run_config

        return run_config(self.run)

    def task(self) -> Task | None:
        """The run's task with what it saved beside the adapter (its labels), without a model (None for a bare
        adapter folder)."""
        if self.run is None:
            return None
        from leantune.run.loader import load_run_task

        return load_run_task(self.run)[1]


def export_run(run_dir: str | os.PathLike, to: str, out: str | os.PathLike, *, rank: int | None = None,
               name: str | None = None, overwrite: bool = False) -> ExportReport:
    """Export the run in ``run_dir`` (or a bare adapter folder, for ``vllm``/``peft``) to ``out`` as ``to``."""
    if to not in FORMATS:
        raise LeantuneError(f"--to {to!r}: choose one of {', '.join(FORMATS)}.")
    if rank is not None and to != "lora":
        raise LeantuneError("--rank is for --to lora (the rank of the converted LoRA); leave it out here.")
    if name is not None and to != "vllm":
        raise LeantuneError("--name is for --to vllm (the adapter's name in vLLM); leave it out here.")
    source = find_source(Path(run_dir).expanduser(), need_run=to in ("merged", "lora"), to=to)
    writers: dict[str, Callable[[Source, Path, Path], ExportReport]] = {
        "merged": write_merged,
        "vllm": lambda s, tmp, dest: write_vllm(s, tmp, dest, name or s.name),
        "peft": write_peft,
        "lora": lambda s, tmp, dest: write_lora(s, tmp, dest, rank or 0),
    }
    if to == "lora":  # reported before anything is written
        if rank is None or rank <= 0:
            raise LeantuneError("--to lora needs --rank R, a positive integer (the rank of the converted LoRA).")
    final = Path(out).expanduser()
    with staged_folder(final, source.path, overwrite) as tmp:
        try:
            report = writers[to](source, tmp, final.resolve())
        except OSError as e:  # a full disk, a permission lost half-way: the staged folder is removed
            raise LeantuneError(f"--out {final}: writing failed ({e.strerror or e}).") from None
        info = {"format": to, "source": str(source.path.resolve()), "method": source.method_label,
                "summary": report.summary, "notes": report.notes, "usage": report.usage, **report.details}
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return report


# ------------------------------------------------------------------------------------------ source and output


def find_source(path: Path, need_run: bool, to: str = "merged") -> Source:
    """The run folder (config.yaml + adapter/) or adapter folder at ``path``; a clear error for anything else."""
    if not path.exists():
        raise LeantuneError(f"run folder not found: {path}")
    if not path.is_dir():
        raise LeantuneError(f"{path} is a file, not a run folder.")
    if is_run_folder(path):
        run, adapter = path, path / ADAPTER_DIR
        if not (adapter / CONFIG_NAME).is_file():
            raise LeantuneError(f"{path} has no trained adapter ({adapter / CONFIG_NAME} is missing): the run has not "
                                "finished. Resume it with `leantune train CONFIG --resume`, then export.")
    elif (path / CONFIG_NAME).is_file():
        if need_run:
            raise LeantuneError(f"{path} is an adapter folder; --to {to} needs the run folder (its config.yaml "
                                "names the base model and the task).")
        run, adapter = None, path
    else:
        raise LeantuneError(f"{path} is neither a leantune run folder (config.yaml and adapter/) nor an adapter "
                            f"folder ({CONFIG_NAME}).")
    if not (adapter / WEIGHTS_NAME).is_file():
        raise LeantuneError(f"{adapter} has no {WEIGHTS_NAME}: no adapter weights to export.")
    _, raw = read_adapter_config(adapter)  # checks the JSON and that leantune knows the method
    return Source(path=path, adapter=adapter, run=run, raw=raw)


@contextlib.contextmanager
def staged_folder(out: Path, source: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into, renamed to ``out`` when the block succeeds (removed if not).

    Refuses an ``out`` that is a file, a non-empty folder (unless ``overwrite``), the source itself or a folder
    holding it, and a place that cannot be written."""
    target, src = out.resolve(), source.resolve()
    if target == src or src.is_relative_to(target):
        raise LeantuneError(f"--out {out} would replace {source} itself; choose another folder.")
    if out.exists() and not out.is_dir():
        raise LeantuneError(f"--out {out} exists and is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LeantuneError(f"--out {out} exists and is not empty; pass --overwrite to replace it, or choose "
                            "another folder.")
    tmp = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise LeantuneError(f"--out {out}: cannot write there ({e.strerror or e}).") from None
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------ merged


def pooled_head(task: Task | None) -> str | None:
    """'mean', 'cls' or 'last' when the classification run used leantune's own pooled head (SentenceClassifier),
    None when it used transformers' own head (or is not a classification run)."""
    from leantune.tasks.classification import ClassificationTask, resolve_pooling

    if not isinstance(task, ClassificationTask):
        return None
    from leantune.models.registry import resolve_model

    pooling = resolve_pooling(resolve_model(task.cfg.model), task.args.pooling, task.model_config)
    return None if pooling == "model" else pooling


POOLING_WORDS = {"mean": "the mean of the encoder's last hidden states over the real tokens",
                 "cls": "the [CLS] token's last hidden state, without BERT's pooler layer",
                 "last": "the last real token's last hidden state"}


def own_head_hint(task: Task) -> str:
    """What the user must train with to get transformers' own classification head on the run's base, if anything."""
    from leantune.models.registry import resolve_model
    from leantune.tasks.classification import sentence_transformers_pooling

    if sentence_transformers_pooling(resolve_model(task.cfg.model)):
        return ("No task_args.pooling value gives transformers' own head on a sentence-transformers base (auto, mean, "
                "cls and last all pool into leantune's head); train on a base without its sentence-transformers "
                "pooling (no 1_Pooling/config.json) for that.")
    return ("Or train with task_args.pooling: auto (the default), which uses transformers' own classification head "
            "on this base.")


def write_merged(src: Source, out: Path, dest: Path) -> ExportReport:
    """Fold the adapter into the base and save a plain transformers folder."""
    from leantune.methods import method_for_peft_type

    method = method_for_peft_type(src.peft_type)
    if not method.mergeable:
        raise LeantuneError(unmergeable_reason(src))
    task = src.task()
    pooling = pooled_head(task)
    if pooling and task is not None:
        raise LeantuneError(
            f"{src.path} was trained with leantune's pooled classification head: `classifier` reads "
            f"{POOLING_WORDS[pooling]} (task_args.pooling: {task.args.pooling} on {task.cfg.model}). No transformers "
            "AutoModelFor... class computes that pooling, so a merged folder would give other outputs. Use --to peft "
            "(the adapter, with how to pool), or the run itself (leantune predict / serve). " + own_head_hint(task))
    import transformers

    import leantune as lt
    from leantune.models.quantize import is_quantized
    from leantune.run.loader import load_run
    from leantune.tasks.generative import GenerativeTask

    cfg, task, model = load_run(src.run)
    if not isinstance(model, transformers.PreTrainedModel):
        raise LeantuneError(f"{src.path}: the run's model is leantune's {type(model).__name__}, not a transformers "
                            "class, so a plain transformers folder cannot express it; use --to peft.")
    quantized = is_quantized(model)
    lt.merge(model)
    leftover = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("leantune")})
    if leftover:  # a merge must leave a model that loads without leantune
        raise LeantuneError(f"internal error: leantune modules {leftover} remain after merging; nothing was written.")
    _restore_inference_config(model, task)
    tokenizer = task.tokenizer
    if model.can_generate():
        gen = model.generation_config
        gen.pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        gen.eos_token_id = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    auto = task.model_class(task.model_config).__name__
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    notes = []
    if quantized:
        notes.append(f"the run trained on a base quantized to {cfg.quantize}: the base was dequantised and the adapter "
                     f"merged into it in {dtype}, so the folder holds the quantised base's values (the quantisation "
                     "error stays in the weights) and is full size.")
    if isinstance(task, GenerativeTask) and not task.seq2seq and not task.use_chat:
        notes.append("the run formatted prompts with leantune's plain '### Instruction: ... ### Response:' "
                     "template, not a chat template: format prompts the same way.")
    return ExportReport(
        format="merged", out=dest,
        summary=f"wrote a merged {type(model).__name__} ({src.method_label} folded into the base, {dtype}) to {dest}",
        notes=notes, usage=[f'transformers.{auto}.from_pretrained("{dest}")  # no leantune needed'],
        details={"architecture": type(model).__name__, "auto_class": auto, "dtype": dtype,
                 "dequantized_base": quantized})


def _restore_inference_config(model: Any, task: Task) -> None:
    """Settings the training setup changed back to what inference wants; the run's label names."""
    from leantune.tasks.classification import ClassificationTask

    base = task.model_config
    if hasattr(model.config, "use_cache"):  # training switches the KV cache off
        model.config.use_cache = getattr(base, "use_cache", True)
    if isinstance(task, ClassificationTask) and task.labels:
        model.config.id2label = {i: str(lab) for i, lab in enumerate(task.labels)}
        model.config.label2id = {str(lab): i for i, lab in enumerate(task.labels)}
        if task.args.multi_label:
            model.config.problem_type = "multi_label_classification"


def unmergeable_reason(src: Source) -> str:
    if src.peft_type in ("PROMPT_TUNING", "PREFIX_TUNING"):
        what = "learned virtual tokens" if src.peft_type == "PROMPT_TUNING" else "learned key/value prefixes"
        return (f"{src.path}: {src.method_label} cannot be merged: it feeds {what} to the model on every call, and no "
                "weight of the base can hold them, so no plain transformers folder computes it. Use --to peft (HF "
                "peft loads it) or the run itself (leantune generate / serve).")
    return (f"{src.path}: {src.method_label} adapters add layers (down/up projections with a nonlinearity) inside "
            "every block; they cannot be folded into the base weights, and peft has no such method. Use the run with "
            "leantune (predict, generate, serve).")


# ------------------------------------------------------------------------------------------ peft


def write_peft(src: Source, out: Path, dest: Path) -> ExportReport:
    """Copy the adapter (already in peft's format) and check that peft reads its config."""
    if src.peft_type not in PEFT_LOADABLE:
        from leantune.methods import method_for_peft_type

        hint = ("--to merged (a plain transformers folder)" if method_for_peft_type(src.peft_type).mergeable
                else "the run with leantune (predict, generate, serve)")
        raise LeantuneError(f"{src.path}: HF peft cannot load {src.method_label} adapters (peft_type "
                            f"{src.peft_type} is leantune's own; peft has no such method). Use {hint}.")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(src.adapter / name, out / name)
    _check_peft_reads(out)
    from leantune.tasks.classification import ClassificationTask

    task = src.task()
    auto = (task.model_class(task.model_config).__name__ if task is not None
            else AUTO_CLASSES.get(src.raw.get("task_type") or "", "AutoModel"))
    notes = []
    pooling = pooled_head(task)
    if pooling:
        encoder = _encoder_prefix(src.adapter / WEIGHTS_NAME)
        notes.append(f"the classification head was trained on {POOLING_WORDS[pooling]}, not on what transformers' "
                     f"{auto.removeprefix('Auto')} feeds it. With peft, compute "
                     f"h = model.base_model.model.{encoder}(**inputs).last_hidden_state, pool h that way, and apply "
                     "model.base_model.model.classifier to the result.")
    num_labels = (f", num_labels={len(task.labels)}"
                  if isinstance(task, ClassificationTask) and task.labels else "")
    base = src.raw.get("base_model_name_or_path") or "BASE_MODEL"
    return ExportReport(
        format="peft", out=dest, summary=f"wrote the {src.method_label} adapter in HF peft's format to {dest}",
        notes=notes, usage=[f'peft.PeftModel.from_pretrained(transformers.{auto}.from_pretrained("{base}"'
                            f'{num_labels}), "{dest}")'])


def _encoder_prefix(weights: Path) -> str:
    """The encoder's attribute in the classifier (``bert`` ...), read from the adapter's tensor names."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        names = [k.removeprefix("base_model.model.").split(".")[0] for k in f.keys()]
    return next((n for n in names if n != "classifier"), "bert")


def _check_peft_reads(folder: Path) -> None:
    try:
        from peft import PeftConfig
    except ImportError:
        return  # peft is not installed here; the files are peft's format all the same
    try:
        PeftConfig.from_pretrained(str(folder))
    except Exception as e:  # peft's own errors are of many types
        raise LeantuneError(f"HF peft cannot read the exported {CONFIG_NAME}: {e}") from None


# ------------------------------------------------------------------------------------------ vLLM


def vllm_problems(raw: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """What vLLM's LoRA loader would refuse (or silently compute differently) that rank padding cannot fix.

    Mirrors vLLM's PEFTHelper (no DoRA, modules_to_save empty, no adapter bias), its weight-name parser (only
    ``lora_A``/``lora_B`` weights), and its one scale per adapter (no rank_pattern/alpha_pattern)."""
    if raw.get("peft_type") != "LORA":
        return [f"it is a {raw.get('peft_type')} adapter, and vLLM serves LoRA adapters only"]
    problems = []
    if raw.get("use_dora"):
        problems.append("it is DoRA, which vLLM does not support (the per-row magnitude vector)")
    if raw.get("modules_to_save"):
        problems.append(f"modules_to_save {raw['modules_to_save']} (layers trained in full and saved with the adapter, "
                        "e.g. a task head); vLLM requires none")
    if raw.get("bias", "none") != "none":
        problems.append(f"bias={raw['bias']!r} (trained biases); vLLM loads LoRA A/B weights only")
    if raw.get("target_parameters"):
        problems.append(f"LoRA on expert parameters (target_parameters {raw['target_parameters']}); vLLM loads LoRA "
                        "on linear layers in peft's format")
    if raw.get("rank_pattern") or raw.get("alpha_pattern"):
        problems.append("rank_pattern/alpha_pattern (per-layer ranks or alphas); vLLM uses one r and lora_alpha")
    task = raw.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        problems.append(f"it adapts a {task} model; vLLM serves LoRA on decoder-only language models (CAUSAL_LM)")
    embeddings = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(("lora_embedding_A", "lora_embedding_B"))})
    if embeddings:
        problems.append(f"LoRA on embedding layer(s) {_short(embeddings)}; vLLM takes LoRA on linear layers")
    known = (".lora_A.weight", ".lora_B.weight", "lora_embedding_A", "lora_embedding_B")
    known += ("lora_magnitude_vector", "lora_magnitude_vector.weight") if raw.get("use_dora") else ()
    other = sorted(k for k in tensors if not k.endswith(known))
    if other:
        problems.append(f"tensors vLLM does not parse as LoRA weights: {_short(other)}")
    r = int(raw.get("r", 0))
    if r > VLLM_RANKS[-1]:
        problems.append(f"rank {r} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")
    bad_shapes = [k for k, t in tensors.items() if (k.endswith(".lora_A.weight") and t.shape[0] != r)
                  or (k.endswith(".lora_B.weight") and t.shape[1] != r)]
    if bad_shapes:
        problems.append(f"tensors whose rank is not r={r}: {_short(bad_shapes)}")
    return problems


def _short(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def padded_lora(raw: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The same LoRA at rank ``rank`` >= r: A gets zero rows, B zero columns, and lora_alpha keeps the scale."""
    r = int(raw["r"])
    scale = raw["lora_alpha"] / (math.sqrt(r) if raw.get("use_rslora") else r)
    alpha = scale * (math.sqrt(rank) if raw.get("use_rslora") else rank)
    alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha
    out = {}
    for key, t in tensors.items():
        if key.endswith(".lora_A.weight"):
            t = torch.cat([t, t.new_zeros(rank - r, t.shape[1])], dim=0)
        elif key.endswith(".lora_B.weight"):
            t = torch.cat([t, t.new_zeros(t.shape[0], rank - r)], dim=1)
        out[key] = t.contiguous()
    return {**raw, "r": rank, "lora_alpha": alpha, "modules_to_save": None}, out


def write_vllm(src: Source, out: Path, dest: Path, name: str) -> ExportReport:
    """A LoRA folder vLLM loads, at a rank vLLM has a --max-lora-rank for, and the `vllm serve` flags."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src.adapter / WEIGHTS_NAME))
    problems = vllm_problems(src.raw, tensors)
    if problems:
        raise LeantuneError(f"{src.path}: vLLM cannot load this adapter as it is: " + "; ".join(problems) + ". "
                            + _vllm_alternatives(src))
    r = int(src.raw["r"])
    rank = next(k for k in VLLM_RANKS if k >= r)
    config, tensors = padded_lora(src.raw, tensors, rank)
    if vllm_problems(config, tensors):  # the padded adapter must pass the same rules
        raise LeantuneError(f"internal error: the padded adapter fails vLLM's rules: {vllm_problems(config, tensors)}")
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "adapter"
    base = src.raw.get("base_model_name_or_path") or "BASE_MODEL"
    padded = (f"rank {r} padded with zeros to {rank}; lora_alpha {src.raw['lora_alpha']:g} -> "
              f"{config['lora_alpha']:g} keeps the scale, so the outputs are the same") if rank != r else f"rank {r}"
    notes = []
    cfg = src.run_config()
    if cfg is not None and cfg.quantize != "none":
        notes.append(f"the run trained on a base quantized to {cfg.quantize}; vLLM applies the adapter to the base you "
                     "serve, so outputs differ from training by the quantisation error.")
    return ExportReport(
        format="vllm", out=dest, summary=f"wrote a vLLM LoRA adapter '{name}' to {dest} ({padded})", notes=notes,
        usage=[f"vllm serve {base} --enable-lora --max-lora-rank {rank} --lora-modules {name}={dest}",
               f'requests: "model": "{name}"'],
        details={"name": name, "rank": rank, "original_rank": r, "max_lora_rank": rank})


def _vllm_alternatives(src: Source) -> str:
    from leantune.methods import method_for_peft_type

    options = []
    if method_for_peft_type(src.peft_type).mergeable:
        options.append("--to merged (a plain model folder vLLM serves as is)")
    convertible = src.raw.get("use_dora") or src.peft_type.lower() in CONVERTIBLE
    if (convertible and not src.raw.get("modules_to_save") and not src.raw.get("target_parameters")
            and src.raw.get("task_type") in (None, "CAUSAL_LM")):
        options.append("--to lora --rank R (convert to plain LoRA) and then --to vllm on that folder")
    return ("Use " + ", or ".join(options) + ".") if options else "Use the run with leantune (generate, serve)."


# ------------------------------------------------------------------------------------------ lora


def write_lora(src: Source, out: Path, dest: Path, rank: int) -> ExportReport:
    """Convert the run's adapter to a plain LoRA of rank ``rank`` with :func:`leantune.to_lora`."""
    assert src.run is not None
    report = to_lora(src.run, rank, out)
    return ExportReport(format="lora", out=dest, summary=f"wrote a rank-{rank} LoRA converted from "
                        f"{src.method_label} to {dest}", notes=[report.summary()],
                        usage=[f"leantune export {dest} --to vllm --out DIR  # or --to peft",
                               f"leantune eval {src.path} --adapter {dest} --data FILE  # its metrics"],
                        details={"rank": rank, "relative_error": report.relative_error})
