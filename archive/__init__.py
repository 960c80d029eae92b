"""The lab's archive: a git repo of experiments (source of truth), a tinydb index and an hnswlib
novelty index derived from it, the embedder, and the candidate set.

Never imports ``agents`` or ``asiarch_tui``."""
