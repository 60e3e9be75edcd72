"""The Task interface: everything the training loop, the CLI, ``leantune estimate``, preflight and a server ask of
a task, declared once.

A task reads its data files into features, builds the model for them, gives the summed loss of a batch (the
count it is divided by comes from :meth:`Task.batch_count` alone), evaluates, predicts, and says what it can do
(``generates``, ``seq2seq``, ``fused_head_bytes``). Its own settings are the config's ``task_args``, validated by
its :attr:`Task.Args` model. Shared pieces live here once: the pad id, the eval batch size, the held-out split, the
length-grouped evaluation loop and the report of skipped rows.
"""

from __future__ import annotations

import copy
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from leantune.config import TaskArgs
from leantune.data.bad_rows import BadRows
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.labels import stratified_split
from leantune.data.writers import write_jsonl
from leantune.errors import LeantuneError
from leantune.models.loading import pretrained
from leantune.run.layout import PREDICTIONS_FILE

if TYPE_CHECKING:
    from leantune.config import RunConfig

T = TypeVar("T")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The features an encoder-style model reads (targets and bookkeeping fields are left out)."""


class Task(ABC):
    """One fine-tuning task. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    """The ``task:`` value of a run config."""
    Args: ClassVar[type[TaskArgs]] = TaskArgs
    """The schema of ``task_args`` for this task."""
    metrics: ClassVar[dict[str, bool]]
    """The headline metrics, in the order they are shown, each with whether higher is better."""
    default_metric: ClassVar[str]
    """The metric that picks the best checkpoint unless ``train.metric`` names another."""
    generates: ClassVar[bool] = False
    """Whether the task's model writes text (then :meth:`generate` works and packing is allowed)."""
    serves: ClassVar[str] = "generate"
    """What ``leantune serve`` offers for a run of the task: ``generate`` (chat / completions), ``classify`` or
    ``answer`` (extractive QA)."""
    default_max_length: ClassVar[int | None] = 128
    """``train.max_length`` when the config leaves it unset (None: :meth:`prepare` chooses it from the data)."""

    def __init__(self, cfg: RunConfig, tokenizer: Any, model_config: Any) -> None:
        """``model_config``: the base model's transformers config. An unset ``train.max_length`` takes the task's
        default here (its config is the run's: the value used is the one the run folder keeps)."""
        if cfg.train.max_length is None:
            cfg.train.max_length = self.default_max_length
        self.cfg = cfg
        self.args = cfg.task_args
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.report: dict[str, Any] = {}
        """What happened to the data (counts read, dropped, truncated), logged at step 0."""
        self.last_predictions: list[dict[str, Any]] = []
        """The last evaluation's predictions beside their references (written by :meth:`finish`)."""

    # ------------------------------------------------------------------------------------------ capabilities
    @property
    def seq2seq(self) -> bool:
        """Whether the model is an encoder-decoder trained on decoder labels."""
        return False

    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        """Whether a larger ``metric`` is a better model."""
        if metric not in cls.metrics:
            raise LeantuneError(f"'{metric}' is not a metric of task {cls.name}; choose one of {', '.join(cls.metrics)}")
        return cls.metrics[metric]

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Rules that span config sections, checked when the config is validated (a ValueError names the keys)."""
        if cfg.train.metric is not None and cfg.train.metric not in cls.metrics:
            raise ValueError(f"train.metric: '{cfg.train.metric}' is not a metric of task {cls.name}; choose one of "
                             f"{', '.join(cls.metrics)}")
        if cfg.train.packing and not cls.generates:
            raise ValueError(f"train.packing is for tasks that train a causal LM to write text, not {cls.name}")

    def fused_head_bytes(self, model: nn.Module, tokens: int) -> int:
        """Bytes of the transient of a head fused with the loss, for ``tokens`` tokens (0: no fused head)."""
        return 0

    # ------------------------------------------------------------------------------------------ data
    @abstractmethod
    def prepare(self) -> tuple[list[dict], list[dict]]:
        """(train features, eval features) from the config's data, holding some out when no eval data is given."""

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eval_batch_size(self) -> int:
        """``train.eval_batch_size``, else twice the training batch (no gradients are kept in evaluation)."""
        return self.cfg.train.eval_batch_size or 2 * self.cfg.train.batch_size

    def hold_out(self, items: list[T], stratum: Callable[[T], Hashable] | None = None,
                 group: Callable[[T], Hashable] | None = None) -> tuple[list[T], list[T]]:
        """(train, held out): ``data.eval_fraction`` of ``items``, seeded, of every ``stratum`` (e.g. label); with
        ``group``, whole groups go one way (e.g. every question of an article)."""
        fraction, seed = self.cfg.data.eval_fraction, self.cfg.train.seed
        if group is not None:
            groups = sorted({group(x) for x in items}, key=str)
            _, held_idx = stratified_split([0] * len(groups), fraction, seed)
            held_groups = {groups[i] for i in held_idx}
            train = [x for x in items if group(x) not in held_groups]
            held = [x for x in items if group(x) in held_groups]
        else:
            strata = [stratum(x) if stratum else 0 for x in items]
            train_idx, held_idx = stratified_split(strata, fraction, seed)
            train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
        self.report["eval_split_from_train"] = len(held)
        return train, held

    def report_bad_rows(self, bad: BadRows, where: str = "") -> None:
        """Record the rows ``bad`` skipped (``data.on_bad_rows: skip``) in the report and say so on stderr."""
        if not bad.total:
            return
        self.report.setdefault("bad_rows_skipped", {}).update(bad.report())
        print(f"leantune: {where + ': ' if where else ''}skipped {bad.total} bad rows: {bad.report()}",
              file=sys.stderr, flush=True)

    def report_dropped(self, path: str, dropped: Mapping[str, int]) -> None:
        """Record rows dropped while reading ``path`` (empty, duplicate, ...) in the report and say so on stderr."""
        if not dropped:
            return
        print(f"leantune: {path}: skipped {dict(dropped)}", file=sys.stderr, flush=True)
        self.report.setdefault("dropped", {}).update({f"{Path(path).name}: {k}": v for k, v in dropped.items()})

    # ------------------------------------------------------------------------------------------ model, loss
    @classmethod
    @abstractmethod
    def model_class(cls, model_config: Any) -> Any:
        """The transformers auto class the task's model is built with, for a base with ``model_config``."""

    @abstractmethod
    def build_model(self, path: str, meta: bool = False) -> nn.Module:
        """The task's model on the base at ``path``; ``meta``: the same modules on the meta device, without
        weights (preflight: a method the model cannot take fails before any weights load)."""

    def load_model(self, cls: Any, path: str, meta: bool = False, model_kwargs: dict[str, Any] | None = None,
                   **config_kwargs: Any) -> nn.Module:
        """``cls`` with the weights at ``path`` (with ``meta``: from the config alone, on the meta device);
        ``config_kwargs`` are set on the model's config, ``model_kwargs`` go to the model's constructor."""
        model_kwargs = model_kwargs or {}
        if not meta:
            return pretrained(cls, path, self.cfg, **model_kwargs, **config_kwargs)
        config = copy.deepcopy(self.model_config)
        for key, value in config_kwargs.items():
            setattr(config, key, value)
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=self.cfg.trust_remote_code, **model_kwargs)

    @abstractmethod
    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch, summed (not averaged) over what :meth:`batch_count` counts."""

    @abstractmethod
    def batch_count(self, batch: dict[str, torch.Tensor]) -> int:
        """What the summed loss of ``batch`` is a sum over (examples, windows or target tokens)."""

    # ------------------------------------------------------------------------------------------ evaluation
    @abstractmethod
    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device) -> dict[str, Any]:
        """Metrics of ``model`` on the prepared eval features."""

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The headline metrics of an evaluation (what the log and the progress line show)."""
        return {k: metrics[k] for k in self.metrics if k in metrics}

    def eval_batches(self, model: nn.Module, features: list[dict], device: torch.device,
                     step: Callable[[dict[str, torch.Tensor]], T],
                     fields: tuple[str, ...] | None = None) -> list[tuple[list[int], T]]:
        """``step`` applied to every batch of ``features`` (only ``fields`` of them, when given), longest first,
        on ``device``, in eval mode and without gradients; returns (feature indices, result) per batch. The model's
        mode is restored."""
        if fields is not None:
            features = [{k: v for k, v in f.items() if k in fields} for f in features]
        batches = length_grouped_batches([len(f["input_ids"]) for f in features], self.eval_batch_size, seed=0,
                                         shuffle=False)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [(idx, step({k: v.to(device) for k, v in batch.items()}))
                        for idx, batch in zip(batches, iterate_batches(features, batches, self.pad_id), strict=True)]
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------------------------------ files, prediction
    @abstractmethod
    def read_file(self, path: str, fmt: str = "auto", labelled: bool = True,
                  target: str | None = None) -> tuple[list[Any], list[dict]]:
        """(records, features) of a file for ``leantune eval`` (``labelled``: answers needed) or ``predict``;
        ``target``: the file of answers, for tasks that keep inputs and answers in separate aligned files."""

    @abstractmethod
    def evaluate_file(self, model: nn.Module, records: list[Any], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        """Metrics on what :meth:`read_file` returned."""

    @abstractmethod
    def predict(self, model: nn.Module, records: list[Any], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        """One output row per record: what identifies its input, then the prediction."""

    def generate(self, model: nn.Module, prompts: list[str], **options: Any) -> list[str]:
        """Completions of user ``prompts`` (rendered as in training); only tasks that generate have it."""
        raise LeantuneError(f"task {self.name} does not generate text; generation works for tasks that train a "
                            "language model to write (instruction, translation).")

    def no_target_file(self, target: str | None) -> None:
        """Refuse a separate answers file for a task that reads inputs and answers from one file."""
        if target is not None:
            raise LeantuneError(f"task {self.name} reads inputs and answers from one file; --target is for tasks "
                                "with aligned answer files (translation).")

    # ------------------------------------------------------------------------------------------ the run folder
    def save_artifacts(self, run_dir: Path) -> None:  # noqa: B027 (an optional hook)
        """Write what a finished run needs besides the adapter (e.g. the label list), before training."""

    def load_artifacts(self, run_dir: Path) -> None:  # noqa: B027 (an optional hook)
        """Read back what :meth:`save_artifacts` wrote (a finished run, loaded for eval / predict)."""

    def finish(self, run_dir: Path) -> None:
        """After training: write the last evaluation's predictions beside their references, if there are any."""
        if self.last_predictions:
            write_jsonl(run_dir / PREDICTIONS_FILE, self.last_predictions)
