"""What a process runs on and how it behaves, shared by training and the readers of finished runs: its device
(:mod:`~leantune.system.device`), its memory (:mod:`~leantune.system.memory`), its signals
(:mod:`~leantune.system.signals`). Nothing here knows runs, tasks or the training loop."""
