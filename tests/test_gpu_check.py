"""benchmarks/gpu_check.py's dry mode (--device cpu --tiny): every section runs on tiny random models."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_dry_mode(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "report.md")])
    assert (tmp_path / "report.md").read_text().strip() == report.strip()
    for section in ("## Environment", "## Tests", "## leantune vs peft + Trainer", "## Fused head", "## QLoRA",
                    "## Precision", "## FSDP2 on one device"):
        assert section in report
    compared = report.split("## leantune vs peft + Trainer")[1].split("## Fused head")[0]
    rows = [line for line in compared.splitlines() if line.startswith("| ") and "tokens/s" not in line]
    assert len(rows) == 3 * 3  # three models x (peer, leantune two ways)
    assert not any("failed" in row for row in rows)
    precision = report.split("## Precision")[1].split("## FSDP2")[0]
    rows = [line for line in precision.splitlines() if line.startswith("| ") and "resolved" not in line]
    assert [row.split(" | ")[1] for row in rows] == ["fp32", "fp32", "bf16", "fp16"]  # auto is fp32 on a CPU
    assert all("| float32 | float32 |" in row for row in rows)  # adapter and optimizer state
    assert "exit 0" in report  # the test files are collected
    assert "FAILED" not in report.split("## FSDP2 on one device")[1]
    assert "adapter_model.safetensors" in report
