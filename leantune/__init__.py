"""leantune: parameter-efficient fine-tuning of pretrained language models."""

from leantune.adapters import (
    adapter_names,
    add_adapter,
    attach,
    delete_adapter,
    disable_adapters,
    load_adapter,
    merge,
    merge_adapter,
    save_adapter,
    set_adapter,
    trainable_parameters,
    unmerge_adapter,
)
from leantune.api import fine_tune
from leantune.convert import ConversionReport, to_lora
from leantune.errors import AdapterMismatchError, LeantuneError
from leantune.export import export_run
from leantune.methods import (
    BitFitConfig,
    BottleneckConfig,
    FullConfig,
    HeadOnlyConfig,
    IA3Config,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeraConfig,
)
from leantune.tasks import TASKS  # noqa: F401  (registers every task's task_args schema with the config)
from leantune.train.callbacks import Callback
from leantune.train.loop import RunResult

__version__ = "0.1.0"

__all__ = [
    "AdapterMismatchError", "BitFitConfig", "BottleneckConfig", "FullConfig", "HeadOnlyConfig", "IA3Config",
    "LeantuneError", "LoraConfig", "PrefixTuningConfig", "PromptTuningConfig", "adapter_names", "add_adapter",
    "attach", "delete_adapter", "disable_adapters", "export_run", "load_adapter", "merge", "merge_adapter",
    "save_adapter", "set_adapter", "trainable_parameters", "unmerge_adapter",
    "LoKrConfig", "OFTConfig", "VeraConfig", "ConversionReport", "to_lora", "fine_tune", "Callback", "RunResult",
]
