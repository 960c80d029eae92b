"""The cognition base: entries on the papers of the field (data files under ``corpus/entries``)
and embedding retrieval over them. May import ``archive`` (embedder, vector index), never
``agents`` or ``asiarch_tui``."""
