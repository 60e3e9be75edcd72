"""The run folder, with one owner: the names of its files (:mod:`~leantune.run.layout`), its state
(:mod:`~leantune.run.status`), its small files (:mod:`~leantune.run.files`), whether a config still fits it
(:mod:`~leantune.run.compat`), and a finished run loaded back (:mod:`~leantune.run.loader`).

This package imports nothing on its own, so that any layer can import :mod:`~leantune.run.layout`."""
