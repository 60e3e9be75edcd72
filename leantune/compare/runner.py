"""Each method's run as ``leantune train`` in its own process (its own peak memory; a crash stays its own), with a
progress line per method read from the run's log, and its failure recorded as a row."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from leantune.compare.plan import MethodPlan, RunState, run_state
from leantune.compare.results import MethodResult, failed_result, read_result
from leantune.config import dump_config
from leantune.run.files import clear_error, read_log, write_error
from leantune.run.layout import METRICS_FILE
from leantune.system.signals import TrainingInterrupted, signal_handlers

FLAGS: dict[RunState, list[str]] = {"new": [], "stale": ["--overwrite"], "interrupted": ["--resume"]}
STATUS: dict[RunState, str] = {"new": "finished", "stale": "finished", "interrupted": "resumed"}
INTERRUPTED_EXIT = 130  # leantune train's exit code after a stop on SIGINT / SIGTERM (with its checkpoint)


def run_method(plan: MethodPlan, out_dir: Path, metric: str, quiet: bool = False) -> MethodResult:
    """Train ``plan``'s method unless its folder already holds its finished run (resuming an interrupted one), and
    return its row; a failure is a row with the error, also written to the run folder's ``error.txt``."""
    if plan.cfg is None:
        write_error(plan.run_dir, plan.error or "invalid config")
        return failed_result(plan.run_dir, plan.method, plan.lr, plan.error or "invalid config")
    state = run_state(plan)
    if state == "finished":
        if not quiet:
            print(f"{plan.method:>10}: finished by an earlier compare; kept", file=sys.stderr, flush=True)
        return read_result(plan.run_dir, plan.method, metric, plan.lr, "skipped")
    clear_error(plan.run_dir)
    config_file = out_dir / "configs" / f"{plan.method}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    dump_config(plan.cfg, config_file)
    log_file = out_dir / "logs" / f"{plan.method}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "leantune", "train", str(config_file), "--quiet", *FLAGS[state]]
    code = _train_process(command, log_file, plan, quiet)
    log = log_file.read_text(encoding="utf-8", errors="replace")
    if code == 0 and (plan.run_dir / METRICS_FILE).is_file():
        return read_result(plan.run_dir, plan.method, metric, plan.lr, STATUS[state])
    error = error_line(log, code)
    write_error(plan.run_dir, error, "\n".join(log.splitlines()[-30:]))
    return failed_result(plan.run_dir, plan.method, plan.lr, error)


def _train_process(command: list[str], log_file: Path, plan: MethodPlan, quiet: bool) -> int:
    """Run ``command`` (output to ``log_file``) with a progress line. Ctrl-C or SIGTERM to the compare, or a stop of
    the run itself (exit 130), lets the run checkpoint and stops the compare; running it again resumes."""
    with log_file.open("w", encoding="utf-8") as log, signal_handlers(signal.default_int_handler, (signal.SIGTERM,)):
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent(),
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _follow(proc, plan, quiet)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise TrainingInterrupted(f"compare interrupted while training {plan.method} (it wrote a checkpoint); "
                                      "run the same command again to resume") from None
    if proc.returncode == INTERRUPTED_EXIT:
        raise TrainingInterrupted(f"the run of {plan.method} was stopped (it wrote a checkpoint); run the same "
                                  "compare again to resume it")
    return proc.returncode


def _follow(proc: subprocess.Popen, plan: MethodPlan, quiet: bool) -> None:
    """Wait for ``proc``, showing its steps, loss and last evaluation from its train_log.jsonl."""
    if quiet:  # poll, not wait(): a signal delivered to another thread still reaches the handler within 0.5 s
        while proc.poll() is None:
            time.sleep(0.5)
        return
    from tqdm.auto import tqdm

    total = plan.cfg.train.max_steps if plan.cfg is not None else None
    with tqdm(total=total, desc=f"{plan.method:>10}", unit="step", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            done = proc.poll() is not None
            rows = read_log(plan.run_dir)
            steps = [r["step"] for r in rows if "loss" in r]
            if steps and steps[-1] != bar.n:
                bar.update(steps[-1] - bar.n)
                evals = [r["eval"] for r in rows if "eval" in r]
                losses = [r["loss"] for r in rows if "loss" in r]
                bar.set_postfix(loss=f"{losses[-1]:.4f}",
                                **{k: f"{v:.4f}" for k, v in (evals[-1] if evals else {}).items()})
            if done:
                return
            time.sleep(0.5)


def _stop_with_parent() -> Callable[[], None] | None:
    """On Linux: the child gets SIGTERM (it checkpoints and exits) when the compare process dies, even by SIGKILL,
    so a killed compare never leaves a run training on behind it."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def error_line(log: str, code: int) -> str:
    """The line of a failed run's output that says why: leantune's ``error:`` line, else a traceback's last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ("Error" in line or "Exception" in line):
            return line
    return f"the run exited with code {code}" + (f": {lines[-1]}" if lines else "")
