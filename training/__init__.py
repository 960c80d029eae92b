"""Training and evaluation engine: backbone, reference ops and mixers, data, probes, trainer,
scales, lm-eval bridge and the sandbox that runs untrusted mixer code.

Never imports ``agents`` or ``asiarch_tui`` (see docs/ARCHITECTURE.md, "Layout")."""
