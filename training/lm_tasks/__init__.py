"""lm-eval tasks shipped with asiarch: YAML configs and their generated jsonl data (package data).

``TASK_DIR`` is the folder to pass to ``lm_eval.tasks.TaskManager(include_path=...)``;
:mod:`training.lm_tasks.generate` regenerates the data from the held-out corpus."""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
