"""One validated run config (YAML), in the style of axolotl: every key known, every error names its key."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leantune.errors import LeantuneError
from leantune.methods.base import MethodConfig
from leantune.methods.registry import METHOD_NAMES, REGISTRY, method_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskArgs(_Strict):
    """A task's own settings (``task_args:`` in the run config): every key known, every error names its key."""


class TaskSchema(Protocol):
    """What the config asks of a task: its ``task_args`` schema and its checks of a whole config."""

    Args: ClassVar[type[TaskArgs]]

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None: ...


TASK_SCHEMAS: dict[str, TaskSchema] = {}
"""Every task by its ``task:`` name, registered from below by ``leantune/tasks/__init__.py`` (importing
``leantune`` imports the tasks, so the registry is full before any config is validated)."""


def register_tasks(tasks: dict[str, TaskSchema]) -> None:
    """Make ``tasks`` (name -> task class) the values ``task:`` accepts, each with its ``task_args`` schema."""
    TASK_SCHEMAS.update(tasks)


def task_schema(name: str) -> TaskSchema:
    """The task called ``name`` (an error listing the task names when there is none)."""
    if name not in TASK_SCHEMAS:
        raise ValueError(f"'{name}' is not a task; choose one of {', '.join(TASK_SCHEMAS)}")
    return TASK_SCHEMAS[name]


class CleanConfig(_Strict):
    """Text cleaning. Every dropped row is counted and reported."""

    nfkc: bool = True
    whitespace: bool = True
    strip_html: bool = False
    lowercase: bool = False
    drop_empty: bool = True
    drop_duplicates: bool = True
    cjk_spaces: bool = True
    """Remove a space between two CJK characters (subtitle line breaks, pre-segmented Chinese); spaces next to
    Latin text stay."""
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, gt=0)
    """Length limits count characters (not whitespace words, which Chinese text does not have)."""


class DataConfig(_Strict):
    """Where the examples are and how they are read and cleaned (the fields a task reads are in its task_args)."""

    train: str
    eval: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "lines", "hf", "text",
                    "alpaca", "chat", "prompt_completion", "squad"] = "auto"
    """File format; for instruction data also the record style (alpaca, chat, prompt_completion, squad)."""
    train_split: str = "train"
    eval_split: str | None = None
    """For hub datasets / saved DatasetDicts: split names."""
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Held out (stratified, seeded) when no eval file is given."""
    clean: CleanConfig = CleanConfig()
    on_bad_rows: Literal["error", "skip"] = "error"
    """A malformed row (bad CSV/JSON, invalid UTF-8, missing fields or label, a label unseen in training):
    error: stop with the file, line and field; skip: drop it, count it, and report the counts in the log."""


class TrainConfig(_Strict):
    """Optimisation and evaluation settings."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=0)
    """Optimizer steps; overrides epochs. 0 evaluates the untouched model."""
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_length: int | None = Field(None, gt=1)
    """Tokens per example (longer ones are truncated, counted in the data report). None: the task chooses; the
    generative tasks from the data (the longest tokenised example, or the 99th percentile where the longest is
    more than twice that; within the model's context length; a multiple of 8), classification and extractive QA
    128. The run's config.yaml keeps the value used."""
    packing: bool = False
    """Causal-LM tasks: pack several examples into each row of max_length tokens (attention and positions kept per
    example, loss per real token); batch_size then counts rows. No compute is spent on padding."""
    activation_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass instead of storing them (non-reentrant):
    much less memory for about a third more compute."""
    compile: bool = False
    """torch.compile the LoRA adapter path (needs a C++ compiler on CPU; the first steps are slower)."""
    seed: int = 0
    eval_before: bool = True
    """Evaluate the starting point (untrained head / zero-shot) before training."""
    eval_every: int | None = Field(None, gt=0)
    """Evaluate every N optimizer steps (and always at the end)."""
    eval_batch_size: int | None = Field(None, gt=0)
    metric: str | None = None
    """Metric that picks the best checkpoint (default: the task's, e.g. accuracy)."""
    early_stopping_patience: int | None = Field(None, gt=0)
    """Stop after this many evaluations without improvement."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """How the forward passes compute. auto: fp32 on the CPU (bf16 is slower there) and on Apple's MPS, bf16
    autocast on GPUs with bf16, fp16 autocast with a dynamic loss scaler on GPUs without it (T4, V100). In fp32 a
    bf16 checkpoint is upcast; under autocast a half-precision base stays in half. Trainable weights and the
    optimizer state are fp32 in every precision."""
    num_threads: int | None = Field(None, gt=0)
    log_every: int = Field(10, gt=0)
    save_every: int | None = Field(200, gt=0)
    """Write a complete checkpoint (weights, optimizer, schedule, RNG, data position) every N steps, and at the
    end; ``leantune train CONFIG --resume`` continues from the newest good one. None: only at the end / on a
    signal."""
    keep_last: int = Field(2, gt=0)
    """How many step checkpoints to keep (checkpoint-best/ is kept besides)."""
    max_nonfinite_steps: int = Field(5, gt=0)
    """Steps with a NaN/Inf loss or gradient are skipped with a warning; after this many the run stops."""
    spike_factor: float | None = Field(None, gt=1)
    """Warn (and log) when a step's loss exceeds this factor x the median of the last 20 steps."""


class DistributedConfig(_Strict):
    """Multi-process training (launched by torchrun, or ``leantune train CONFIG --nproc N``)."""

    strategy: Literal["none", "ddp", "fsdp"] = "none"
    """ddp: every process holds the model, only trainable parameters are synchronised; fsdp: FSDP2 shards every
    transformer block (for bases too large for one device). none under torchrun means ddp."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """auto: NCCL on CUDA, gloo on CPU."""


class CompareConfig(_Strict):
    """Settings of ``leantune compare`` (``leantune train`` ignores them): per-method learning rates and settings."""

    lr: dict[str, float] = {}
    """Learning rate per method name, e.g. {head: 1.0e-2, full: 5.0e-5} (else the config's train.lr for its own
    method, else a per-method default)."""
    method_args: dict[str, dict[str, Any]] = {}
    """method_args per method name, e.g. {lora: {r: 8}} (else the config's own method_args for its method)."""

    @field_validator("lr", "method_args")
    @classmethod
    def _method_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = [name for name in value if name not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown method {', '.join(map(repr, unknown))}; methods: {', '.join(METHOD_NAMES)}")
        return value

    @field_validator("lr")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, lr in value.items() if not lr > 0]
        if bad:
            raise ValueError(f"learning rates must be > 0 (not for {', '.join(bad)})")
        return value

    @field_validator("method_args")
    @classmethod
    def _valid_args(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, args in value.items():
            try:
                method_config(name, args)
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise ValueError(f"method_args of {name}: {problems}") from None
            except LeantuneError as e:
                raise ValueError(f"method_args of {name}: {e}") from None
        return value


class RunConfig(_Strict):
    """A whole fine-tuning run."""

    model: str
    """Embedded alias (minilm, smollm2), a local folder, or a hub id."""
    task: str = "classification"
    """A name from leantune/tasks/ (classification, instruction, translation, extractive_qa)."""
    task_args: SerializeAsAny[TaskArgs] = Field(default_factory=TaskArgs, validate_default=True)
    """The task's own settings, validated by the task (leantune/tasks/): e.g. classification's text_column and
    pooling, translation's source_lang and target_lang, instruction's max_new_tokens, extractive QA's doc_stride."""
    method: Literal[METHOD_NAMES] = "lora"  # type: ignore[valid-type]
    """A name from leantune/methods/registry.py (dora: LoRA with use_dora)."""
    method_args: SerializeAsAny[MethodConfig] = Field(default_factory=MethodConfig, validate_default=True)
    """The method's settings, validated by the method's config class (lora and dora: LoraConfig's r, alpha ...)."""
    quantize: Literal["none", "nf4", "int8"] = "none"
    """Store the frozen base's linear layers in 4-bit NF4 or int8 (QLoRA); the adapter trains on top in full
    precision. Heads and the LM head stay as they are."""
    quantize_backend: Literal["auto", "leantune", "bitsandbytes"] = "auto"
    """auto: bitsandbytes on CUDA when installed, else leantune's portable PyTorch path (any device)."""
    data: DataConfig
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    output_dir: str = "runs/run"
    trust_remote_code: bool = False
    """Let a model folder / hub repo run its own Python code (off: only transformers' own architectures)."""
    allow_pickle_weights: bool = False
    """Read model weights from pickle (.bin) files when a model has no safetensors (pickle can run code)."""
    compare: CompareConfig | None = None
    """``leantune compare``'s per-method settings (not used by a single run)."""

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        task_schema(value)
        return value

    @field_validator("task_args", mode="before")
    @classmethod
    def _task_args(cls, value: Any, info: ValidationInfo) -> Any:
        """Validate ``task_args`` with the schema of the task the config names."""
        if "task" not in info.data:
            return TaskArgs()  # the task itself is wrong: that error is enough
        schema = task_schema(info.data["task"]).Args
        if isinstance(value, schema):
            return value
        return schema.model_validate(value.model_dump() if isinstance(value, BaseModel) else value or {})

    @field_validator("method_args", mode="before")
    @classmethod
    def _method_args(cls, value: Any, info: ValidationInfo) -> Any:
        """Validate ``method_args`` with the config class of the method the config names."""
        if "method" not in info.data:
            return MethodConfig()  # the method itself is wrong: that error is enough
        if isinstance(value, BaseModel):  # only what was set: the method's own defaults stand (full's heads: [])
            value = value.model_dump(exclude_unset=True)
        if value is not None and not isinstance(value, dict):
            raise ValueError("method_args must be a mapping of the method's settings, e.g. {r: 8}")
        return method_config(info.data["method"], value)

    @model_validator(mode="after")
    def _check_method(self) -> RunConfig:
        task_schema(self.task).check_config(self)
        if self.quantize != "none" and self.method == "full":
            raise ValueError(f"quantize: {self.quantize} freezes the base in low precision; full fine-tuning needs "
                             "its weights in full precision (use a LoRA-family method, or quantize: none)")
        if self.train.packing and self.method in ("prompt", "prefix"):
            raise ValueError(f"train.packing cannot be combined with method {self.method} (virtual tokens belong to "
                             "one sequence per row); turn packing off")
        return self


def _valid_keys(model: type[BaseModel], loc: tuple, raw: dict[str, Any]) -> list[str]:
    """The keys allowed at ``loc`` (the parent of an unknown key) of the config ``raw``."""
    current: Any = model
    for depth, part in enumerate(loc):
        if depth == 0 and part == "task_args":  # its schema is the task's
            try:
                current = task_schema(raw.get("task", "classification")).Args
            except ValueError:
                return []
            continue
        if depth == 0 and part == "method_args":  # its schema is the method's
            spec = REGISTRY.get(raw.get("method", "lora"))
            if spec is None:
                return []
            current = spec.config_cls
            continue
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    if issubclass(current, MethodConfig):  # the method's own settings first, then the shared ones, then peft's names
        own = sorted(current.model_fields, key=lambda k: k in MethodConfig.model_fields)
        return own + [f"{theirs} (= {ours})" for theirs, ours in current.peft_names.items()]
    return list(current.model_fields)


MOVED_TO_TASK_ARGS = {
    "pooling", "data.text_column", "data.text_pair_column", "data.label_column", "data.multi_label",
    "data.label_separator", "data.template", "data.system_prompt", "data.train_target", "data.eval_target",
    "data.source_column", "data.target_column", "data.source_lang", "data.target_lang", "train.eval_max_examples",
    "train.max_new_tokens", "train.doc_stride", "train.max_answer_length",
}
"""Keys of older configs that are now the task's own settings (``task_args.<name>``)."""


def format_validation_error(e: ValidationError, source: str, raw: dict[str, Any] | None = None,
                            echo_values: bool = True) -> str:
    """One line for every problem of the config ``raw`` read from ``source``, each naming its key (and, unless
    ``echo_values`` is off, what is wrong with the value it holds)."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(RunConfig, loc[:-1], raw or {})
            where = {"task_args": f" of task {(raw or {}).get('task', 'classification')}",
                     "method_args": f" of method {(raw or {}).get('method', 'lora')}"}.get(loc[0], "")
            if key in MOVED_TO_TASK_ARGS:
                lines.append(f"unknown key '{key}': it is a task setting now, task_args.{loc[-1]}")
                continue
            lines.append(f"unknown key '{key}'" + (f"; valid keys{where}: {', '.join(valid)}" if valid else ""))
        elif err["type"] == "missing":
            lines.append(f"missing key '{key}'")
        elif not echo_values:
            lines.append(f"'{key}': not a valid value ({err['type']})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"'{key}': {msg} (got {err.get('input')!r})" if loc else msg)
    return f"{source}: " + "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise LeantuneError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
    key, value = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise LeantuneError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``key.sub=value`` overrides, validate. Relative data paths are kept as given."""
    return validate_config(read_raw_config(path, overrides), str(path))


def read_raw_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML run config as a plain mapping with ``key.sub=value`` overrides applied (not validated yet)."""
    path = Path(path)
    if not path.is_file():
        raise LeantuneError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LeantuneError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise LeantuneError(f"{path}: the config must be a mapping of keys to values.")
    for item in overrides or []:
        keys, value = parse_override(item)
        set_key(raw, keys, value, f"--set {item}")
    return raw


def set_key(raw: dict[str, Any], keys: list[str], value: Any, what: str) -> None:
    """Set ``raw[keys[0]][keys[1]]...`` to ``value`` (sections made as needed). A method setting given by peft's
    name replaces the one given by leantune's, and the other way round (``lora_alpha`` for ``alpha``)."""
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise LeantuneError(f"{what}: '{k}' is not a section.")
    if keys[0] == "method_args" and len(keys) == 2:
        spec = REGISTRY.get(raw.get("method", "lora"))
        names = spec.config_cls.peft_names if spec else {}
        for theirs, ours in names.items():
            if keys[1] in (theirs, ours):
                node.pop(ours if keys[1] == theirs else theirs, None)
    node[keys[-1]] = value


def validate_config(raw: dict[str, Any], source: str = "config", echo_values: bool = True) -> RunConfig:
    """``raw`` as a :class:`RunConfig`; every problem named by its key (``echo_values`` off: not what the file holds
    there, for a server that answers clients about files they cannot read)."""
    try:
        return RunConfig(**raw)
    except ValidationError as e:
        raise LeantuneError(format_validation_error(e, source, raw, echo_values)) from None
    except LeantuneError as e:
        raise LeantuneError(f"{source}: {e}" if echo_values else f"{source}: not a valid run config") from None


def dump_config(cfg: RunConfig, path: Path) -> None:
    dumped = cfg.model_dump(mode="json", exclude={"compare"} if cfg.compare is None else None)
    path.write_text(yaml.safe_dump(dumped, sort_keys=False))
