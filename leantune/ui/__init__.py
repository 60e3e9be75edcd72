"""``leantune ui``: a web dashboard over the run folders: the runs list, a run's page (curves, progress, metrics,
checkpoints, errors), launching / stopping / resuming runs, comparing runs, and a playground on the serving engine.

- :mod:`~leantune.ui.runs`: the run folders and their status; :mod:`~leantune.ui.detail`: a run's page data;
- :mod:`~leantune.ui.launch`: ``leantune train`` subprocesses; :mod:`~leantune.ui.compare_view`: picked runs
  through ``leantune compare``'s report;
- :mod:`~leantune.ui.confine`: what a launch may set and which process a stop may signal;
- :mod:`~leantune.ui.guard`: the allowed ``Host`` names, Origin and CSRF token of every request;
- :mod:`~leantune.ui.app`: the FastAPI app; :mod:`~leantune.ui.server`: ``leantune ui``.
"""
