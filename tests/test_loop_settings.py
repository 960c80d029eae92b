"""LoopSettings: the lab's config with a command's overrides, resolved once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.loop import Loop, LoopSettings
from archive.config import LabConfig
from tests.loop_helpers import FakeExecutor, make_lab


def test_config_values_unless_overridden() -> None:
    cfg = LabConfig()
    cfg.loop.experiments, cfg.loop.early_stop, cfg.executor.concurrency = 7, False, 3
    s = LoopSettings.from_config(cfg)
    assert (s.mode, s.scale, s.experiments, s.seeds, s.early_stop, s.concurrency) == (
        "autonomous", "explore", 7, 3, None, 3)
    s = LoopSettings.from_config(cfg, mode="supervised", scale="probe", experiments=0, seed=4,
                                 concurrency=1, llm="builtin", baselines=("deltanet",))
    assert (s.mode, s.scale, s.experiments, s.seed, s.concurrency, s.llm, s.baselines) == (
        "supervised", "probe", 0, 4, 1, "builtin", ("deltanet",))


def test_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not autonomous or supervised"):
        LoopSettings.from_config(LabConfig(), mode="lazy")


def test_settings_or_overrides_not_both() -> None:
    with pytest.raises(TypeError, match="either settings or overrides"):
        Loop(object(), LoopSettings.from_config(LabConfig()), mode="supervised")


def test_the_loop_starts_from_its_settings(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    settings = LoopSettings.from_config(lab.config, llm="builtin", mode="supervised", experiments=2, hours=1.5,
                                        seed=9, baselines=("deltanet",))
    loop = Loop(lab, settings, executor=FakeExecutor())
    assert loop.settings is settings and (loop.mode, loop.budget_experiments, loop.budget_hours, loop.seed) == (
        "supervised", 2, 1.5, 9)
    assert loop.baseline_names == ("deltanet",) and loop.n_seeds == lab.config.loop.seeds
    assert {s.backend for s in loop.role_specs.values()} == {"builtin"}
    lab.close()
