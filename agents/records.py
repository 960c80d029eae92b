"""Small helpers shared by the loop's modules: the time stamp, the scale's name and parameter
budget, the versions of the software, and the metrics summary carried by events."""

from __future__ import annotations

from typing import Any

__all__ = ["scale_name", "utc", "summary", "param_budget", "versions"]


def scale_name(scale: Any) -> str:
    """A scale's name (``scale`` is a name or a ``training.scales.Scale``)."""
    return scale if isinstance(scale, str) else scale.name


def utc() -> str:
    """Now, as the archive writes it."""
    from archive.record import utc_now

    return utc_now()


def summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics an ``ExperimentFinished`` event carries."""
    m = metrics or {}
    return {k: m.get(k) for k in ("status", "val_loss", "val_bpb", "probe_mean", "probe_mean_partial", "partial",
                                  "tokens_per_s", "mixer_params", "cpu_seconds", "throughput_vs_seed")
            if k in m}


def param_budget(scale: Any) -> int | None:
    """The scale's mixer parameter budget (None when the scale is unknown)."""
    try:
        from training.scales import get_scale

        return int(get_scale(scale).mixer_param_budget)
    except Exception:
        return None


def versions() -> dict[str, str]:
    """Python's, torch's and asiarch's versions (for ``record.versions``)."""
    import platform

    out = {"python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
    except Exception:
        pass
    try:
        from importlib.metadata import version

        out["asiarch"] = version("asiarch")
    except Exception:
        pass
    return out
