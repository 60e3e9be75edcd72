"""A method tried on a weightless copy of the model, so a bad combination fails in a second, before data or weights
load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leantune.errors import LeantuneError

if TYPE_CHECKING:
    from leantune.config import RunConfig
    from leantune.tasks.base import Task


def preflight(cfg: RunConfig, task: Task, model_path: str) -> None:
    """Attach ``cfg``'s method to the model ``task`` trains, built on the meta device (no weights): a method the
    architecture cannot take, or targets it does not have, fail here with the model's name."""
    import leantune as lt

    try:
        skeleton = task.build_model(model_path, meta=True)
    except (ValueError, KeyError):
        return  # an architecture without this head class: the real build reports it
    try:
        lt.attach(skeleton, cfg.method_args)
    except LeantuneError as e:
        raise LeantuneError(f"method {cfg.method} on {cfg.model}: {e}") from None
    except (NotImplementedError, RuntimeError):
        pass  # initialisations that need real weights (e.g. PiSSA's SVD): checked when the model loads
