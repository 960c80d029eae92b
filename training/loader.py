"""Load the ``Mixer`` class of a mixer file, in this process.

Trusted code only: this executes the file. Candidate code from an LLM goes through the sandbox
(training.sandbox), whose child process calls this after its own static checks; the parent never
does. Every problem a user can meet is raised as :class:`MixerLoadError` with one paragraph that
names it (syntax error and line, exception while running the file, no ``Mixer``, not an
``nn.Module`` subclass, wrong ``__init__`` / ``forward`` signature).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import traceback
import types
from pathlib import Path

import torch.nn as nn

__all__ = ["MixerLoadError", "load_mixer_class", "load_mixer_module"]


class MixerLoadError(Exception):
    """A mixer file could not be loaded; the message is one paragraph for the user."""


def _looks_like_path(text: object) -> bool:
    """A one-line string naming a ``.py`` file or an existing file is a path, not source."""
    if not isinstance(text, str) or "\n" in text:
        return False
    if text.strip().endswith(".py"):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _read(path_or_source: str | Path) -> tuple[str, str, str]:
    """(source, file name for messages, module name)."""
    if isinstance(path_or_source, Path) or _looks_like_path(path_or_source):
        path = Path(path_or_source)
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MixerLoadError(f"Mixer file {path} does not exist.") from None
        except UnicodeDecodeError as exc:
            raise MixerLoadError(f"Mixer file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        except OSError as exc:
            raise MixerLoadError(f"Mixer file {path} cannot be read: {exc.strerror or exc}.") from None
        return source, str(path), _module_name(path.stem)
    if not isinstance(path_or_source, str):
        raise MixerLoadError(f"Expected a mixer file path or its source code, got {type(path_or_source).__name__}.")
    return path_or_source, "<mixer source>", "candidate_mixer"


def _module_name(stem: str) -> str:
    """A module name after the file's stem that cannot shadow a real module (torch.py -> mixer_torch)."""
    name = re.sub(r"\W", "_", stem) or "mixer"
    if name[0].isdigit():
        name = f"mixer_{name}"
    existing = sys.modules.get(name)
    if existing is not None and not getattr(existing, "__asiarch_mixer__", False):
        return f"mixer_{name}"
    if existing is None:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = True
        if found:
            return f"mixer_{name}"
    return name


def _user_frame_line(exc: BaseException, filename: str) -> int | None:
    """Line in the mixer file where ``exc`` was raised (innermost frame in that file)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def load_mixer_module(path_or_source: str | Path) -> types.ModuleType:
    """Execute a mixer file in a fresh module named after the file; return the module.

    ``path_or_source`` is a path (``Path``, or a one-line string ending in ``.py`` or naming an
    existing file) or the source
    code itself. The module is registered in ``sys.modules`` under its name (replacing an earlier
    module of the same name) so that dataclasses and pickling work inside it.
    """
    source, filename, module_name = _read(path_or_source)
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = f": `{exc.text.strip()}`" if exc.text and exc.text.strip() else ""
        raise MixerLoadError(f"{filename} has a syntax error at {where}{text} ({exc.msg}).") from None
    except ValueError as exc:  # e.g. null bytes in the source
        raise MixerLoadError(f"{filename} cannot be compiled: {exc}.") from None
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__asiarch_mixer__ = True
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:
        if previous is not None:
            sys.modules[module_name] = previous
        else:
            sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _user_frame_line(exc, filename)
        where = f" at line {line}" if line else ""
        raise MixerLoadError(
            f"Running {filename} raised {type(exc).__name__}{where}: {exc}. The file must define its "
            "Mixer class without side effects at import time, importing only torch, einops and training.ops."
        ) from None
    return module


def _check_signature(cls: type, filename: str) -> None:
    try:
        init_sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        init_sig = None
    if init_sig is not None:
        params = list(init_sig.parameters.values())
        try:
            init_sig.bind(object(), 64, 4)
        except TypeError as exc:
            raise MixerLoadError(
                f"Mixer.__init__ in {filename} cannot be called as Mixer(d_model, n_heads) ({exc}); the contract "
                "is `def __init__(self, d_model: int, n_heads: int, **kwargs)`."
            ) from None
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            raise MixerLoadError(
                f"Mixer.__init__ in {filename} does not accept **kwargs; the contract is "
                "`def __init__(self, d_model: int, n_heads: int, **kwargs)` so that the backbone can pass "
                "options such as chunk_size."
            )
    forward = cls.__dict__.get("forward") or getattr(cls, "forward", None)
    if forward is None or forward is nn.Module.forward:
        raise MixerLoadError(f"Mixer in {filename} does not define forward(self, x).")
    try:
        inspect.signature(forward).bind(object(), object())
    except TypeError as exc:
        raise MixerLoadError(
            f"Mixer.forward in {filename} cannot be called as forward(x) ({exc}); the contract is "
            "`def forward(self, x: torch.Tensor) -> torch.Tensor` mapping [batch, length, d_model] to the same shape."
        ) from None
    except ValueError:
        pass


def load_mixer_class(path_or_source: str | Path) -> type[nn.Module]:
    """The ``Mixer`` class defined by a mixer file (path) or source string.

    Raises :class:`MixerLoadError` (one paragraph) if the file does not parse or run, defines no
    ``Mixer``, ``Mixer`` is not an ``nn.Module`` subclass, or its ``__init__`` / ``forward`` do not
    have the contract's signatures.
    """
    module = load_mixer_module(path_or_source)
    filename = module.__file__
    cls = module.__dict__.get("Mixer")
    if cls is None:
        classes = sorted(
            name for name, obj in module.__dict__.items() if isinstance(obj, type) and obj.__module__ == module.__name__
        )
        hint = f" (it defines {', '.join(classes)})" if classes else ""
        raise MixerLoadError(
            f"{filename} defines no class named Mixer{hint}; the contract is `class Mixer(torch.nn.Module)` with "
            "`__init__(self, d_model, n_heads, **kwargs)` and `forward(self, x)`."
        )
    if not isinstance(cls, type):
        raise MixerLoadError(f"Mixer in {filename} is a {type(cls).__name__}, not a class; define `class Mixer(torch.nn.Module)`.")
    if not issubclass(cls, nn.Module):
        raise MixerLoadError(
            f"Mixer in {filename} is not a subclass of torch.nn.Module (its bases: "
            f"{', '.join(b.__name__ for b in cls.__bases__)}); define `class Mixer(torch.nn.Module)`."
        )
    _check_signature(cls, filename)
    return cls
