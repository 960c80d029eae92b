"""Helpers referenced from the shipped task YAMLs (``!function utils.<name>``).

lm-eval loads this file by path (not as ``training.lm_tasks.utils``), so it uses no relative
imports. ``load_local_json`` is the YAMLs' ``custom_dataset``: lm-eval would resolve
``data_files`` against the current directory, so instead they are resolved against this folder
and read into an in-memory ``datasets.DatasetDict``: no network, no Hugging Face cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_local_json(data_files: str | dict[str, str] | None = None, **_: Any):
    """Build a ``DatasetDict`` from jsonl files named relative to ``training/lm_tasks``.

    ``data_files`` is ``{split: file}`` (a single file means split ``test``), as in the YAML's
    ``dataset_kwargs``; other keyword arguments (lm-eval passes the task metadata) are ignored.
    Raises ``FileNotFoundError`` naming the regeneration command when a file is missing.
    """
    import datasets

    if data_files is None:
        raise ValueError("load_local_json needs data_files (set dataset_kwargs.data_files in the task YAML)")
    files = {"test": data_files} if isinstance(data_files, str) else dict(data_files)
    splits = {}
    for split, name in files.items():
        path = Path(name) if Path(name).is_absolute() else HERE / name
        if not path.is_file():
            raise FileNotFoundError(
                f"lm-eval task data {path} is missing; regenerate it with: python -m training.lm_tasks.generate"
            )
        splits[split] = datasets.Dataset.from_list(_read_jsonl(path))
    return datasets.DatasetDict(splits)
