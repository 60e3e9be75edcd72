"""The run folder's names: the files a training run writes are the ones the layout names (older runs stay
readable), and the checkpoint the ``latest`` pointer names is tried first."""

from __future__ import annotations

from leantune.run import layout


def test_the_names_are_the_run_folder_format():
    """Run folders written by earlier versions are read by these names: they never change."""
    assert (layout.CONFIG_FILE, layout.STATUS_FILE, layout.METRICS_FILE, layout.LOG_FILE, layout.LOSS_PLOT) == \
        ("config.yaml", "status.json", "metrics.json", "train_log.jsonl", "loss.png")
    assert (layout.LABELS_FILE, layout.PREDICTIONS_FILE, layout.ERROR_FILE, layout.ADAPTER_DIR) == \
        ("labels.json", "predictions.jsonl", "error.txt", "adapter")
    assert (layout.CHECKPOINTS, layout.LATEST, layout.BEST, layout.TRAINABLE) == \
        ("checkpoints", "latest", "checkpoint-best", "trainable.safetensors")
    assert layout.checkpoint_name(120) == "step-0000120"


def test_a_training_run_writes_what_the_layout_names(trained):
    for name in (layout.CONFIG_FILE, layout.STATUS_FILE, layout.METRICS_FILE, layout.LOG_FILE, layout.LOSS_PLOT,
                 layout.LABELS_FILE):
        assert (trained / name).is_file(), name
    assert (trained / layout.ADAPTER_DIR).is_dir()
    assert layout.is_run_folder(trained) and layout.has_result(trained)
    newest = trained / layout.CHECKPOINTS / layout.checkpoint_name(4)
    assert layout.latest_name(trained) == newest.name and (newest / layout.TRAINABLE).is_file()
    assert layout.candidates(trained)[0] == newest


def test_the_latest_pointer_is_tried_first_then_the_newest(tmp_path):
    assert layout.candidates(tmp_path) == [] and layout.latest_name(tmp_path) is None
    assert not layout.is_run_folder(tmp_path) and not layout.has_result(tmp_path)
    root = tmp_path / layout.CHECKPOINTS
    for step in (2, 4, 6):
        (root / layout.checkpoint_name(step)).mkdir(parents=True)
    (root / ".tmp-step-0000008").mkdir()  # a checkpoint a crash left unfinished
    (root / layout.LATEST).write_text("step-0000004\n")
    assert [p.name for p in layout.candidates(tmp_path)] == ["step-0000004", "step-0000006", "step-0000002"]
