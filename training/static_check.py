"""The static wall in front of untrusted mixer code: an AST allow-list, checked before anything runs.

A candidate mixer is one Python file written by a language model or a mutation engine. Before the
sandbox child executes it, and before the parent even spawns a child, the source is parsed (never
executed) and walked:

- it must parse, and define ``class Mixer(nn.Module)`` at module level with
  ``__init__(self, d_model, n_heads, ..., **kwargs)`` and ``forward(self, x, ...)``;
- every import must be one of :data:`ALLOWED_MODULES` (``torch``, ``torch.nn``,
  ``torch.nn.functional``, ``math``, ``einops``, ``typing``, ``dataclasses``, ``functools``,
  ``training.ops``, plus ``__future__``); no relative imports; ``import training.ops`` is refused
  (it would bind the whole ``training`` package) - use ``from training import ops`` or
  ``from training.ops import ...``;
- forbidden names: ``__import__``, ``eval``, ``exec``, ``compile``, ``open``, ``globals``,
  ``locals``, ``vars``, ``breakpoint``, ``input``, ``exit``, ``quit``, ``help``, ``memoryview``
  and any dunder name (``__builtins__``, ``__loader__`` ...);
- forbidden attributes: any dunder except ``__init__`` (so no chain through ``__class__``,
  ``__mro__``, ``__globals__``, ``__subclasses__``, ``__dict__`` ...), frame/code internals
  (``f_globals``, ``gi_frame``, ``tb_frame`` ...), module handles reachable as attributes
  (``torch.os``, ``F.sys`` ...) and torch's I/O and native-code doors (``torch.save``,
  ``torch.load``, ``torch.hub``, ``torch.utils``, ``torch.ops``, ``torch._C``,
  ``from_file``, ``tofile`` ...); private module attributes (``torch._C``);
- ``getattr``/``setattr``/``delattr``/``hasattr`` with a constant dunder or forbidden name, and
  string constants that spell a dunder name (``"__class__"``), except docstrings;
- ``async``/``await``/``yield`` (generator and coroutine frames are an escape route).

Each violation names the line and the construct. The sandbox child keeps a runtime guard as
well (restricted builtins for the candidate module, an audit hook, a socket guard): this module is
the first wall, not the only one.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field

#: Modules a candidate may import (exact names).
ALLOWED_MODULES: frozenset[str] = frozenset({
    "torch", "torch.nn", "torch.nn.functional", "math", "einops", "typing", "dataclasses",
    "functools", "training.ops", "__future__",
})

#: Builtins and names a candidate may not mention at all.
FORBIDDEN_NAMES: frozenset[str] = frozenset({
    "__import__", "eval", "exec", "compile", "open", "globals", "locals", "vars", "breakpoint",
    "input", "exit", "quit", "help", "memoryview", "__builtins__", "__loader__", "__spec__",
    "copyright", "credits", "license",
})

#: Dunder names a candidate may read (``if __name__ == "__main__":`` blocks are common in
#: generated files; in the sandbox the module is not ``__main__``, so the block never runs).
ALLOWED_DUNDER_NAMES: frozenset[str] = frozenset({"__name__"})
ALLOWED_DUNDER_STRINGS: frozenset[str] = frozenset({"__main__"})

#: Dunder attributes a candidate may use.
ALLOWED_DUNDER_ATTRS: frozenset[str] = frozenset({"__init__"})

#: Attribute names refused anywhere (frame internals, module handles, file I/O and native code).
FORBIDDEN_ATTRS: dict[str, str] = {
    **{name: "frame/code internals" for name in (
        "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "gi_frame", "gi_code",
        "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "tb_frame",
        "tb_next", "func_globals", "func_code", "co_code", "co_consts", "mro")},
    **{name: "a module handle outside the allow-list" for name in (
        "os", "sys", "subprocess", "importlib", "builtins", "socket", "ctypes", "shutil", "pathlib",
        "io", "inspect", "gc", "pickle", "marshal", "platform", "threading", "multiprocessing",
        "tempfile", "glob", "urllib", "http", "requests", "warnings", "weakref", "traceback",
        "linecache", "runpy", "codeop", "pty", "resource", "mmap", "asyncio", "numpy", "np", "fla",
        "triton", "zipfile", "tarfile", "json", "logging", "distutils", "setuptools", "pkgutil",
        "sysconfig", "atexit", "faulthandler", "copyreg", "operator", "types", "collections",
        "contextlib", "copy", "abc", "codecs", "signal", "selectors", "posix", "errno", "stat",
        "fcntl", "keyword", "itertools", "reprlib", "string", "textwrap", "enum", "typing",
        "serialization", "_weakref", "_thread", "posixpath", "genericpath")},
    **{name: "evaluates strings as code or reaches frames" for name in (
        "get_type_hints", "ForwardRef", "get_annotations", "_eval_type", "evaluate_forward_ref",
        "make_dataclass", "attrgetter", "methodcaller", "_getframe", "currentframe")},
    **{name: "file I/O or native code" for name in (
        "save", "load", "hub", "utils", "ops", "classes", "library", "distributed", "package",
        "from_file", "tofile", "fromfile", "jit", "compile", "export", "onnx", "profiler",
        "cpp_extension", "load_library", "_C", "_dynamo", "_inductor", "storage", "share_memory_",
        "_ops", "_library", "overrides", "multiprocessing", "set_num_threads", "set_num_interop_threads")},
    **{name: "a process-wide hook (it would reach beyond the mixer)" for name in (
        "register_module_forward_hook", "register_module_forward_pre_hook",
        "register_module_backward_hook", "register_module_full_backward_hook",
        "register_module_full_backward_pre_hook", "register_module_buffer_registration_hook",
        "register_module_parameter_registration_hook", "register_module_module_registration_hook",
        "settrace", "setprofile", "addaudithook")},
}

#: Builtins that take an attribute name as a string.
ATTR_BUILTINS: frozenset[str] = frozenset({"getattr", "setattr", "delattr", "hasattr"})

_BUILTIN_NAMES: frozenset[str] = frozenset(dir(builtins))
#: Standard-library module names refused as attribute names (module handles reached through an
#: allowed module), except the allowed modules and names torch uses for ordinary functions.
_STDLIB_MODULES: frozenset[str] = frozenset(
    n for n in getattr(__import__("sys"), "stdlib_module_names", ())
    if not n.startswith("_") and n not in {"math", "functools", "dataclasses", "random", "select", "array",
                                           "numbers", "token", "this", "nturl2path", "cmath", "statistics",
                                           "fractions", "decimal", "colorsys", "bisect", "heapq",
                                           # torch functions/methods that share a module's name
                                           "chunk", "trace", "signal"})
#: Classes a candidate may not subclass.
_FORBIDDEN_BASES: frozenset[str] = frozenset({"str", "bytes", "bytearray", "type", "PathLike", "int", "float",
                                              "dict", "list", "tuple", "set", "frozenset", "BaseException",
                                              "Exception", "memoryview"})
_DUNDER = re.compile(r"__[A-Za-z0-9_]+__")
MAX_SOURCE_BYTES = 512 * 1024


@dataclass
class Violation:
    """One refused construct: where it is and what it is."""

    line: int
    construct: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.construct}: {self.message}"


@dataclass
class StaticReport:
    """The outcome of :func:`static_check`: the first two checks of the checker.

    ``parse_ok`` and ``contract_ok`` cover check 1 (parses, defines the contract), ``imports_ok``
    covers check 2 (imports and constructs within the allow-list)."""

    parse_ok: bool
    contract_ok: bool
    imports_ok: bool
    parse_error: str | None = None
    contract_errors: list[Violation] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the source passes every static rule."""
        return self.parse_ok and self.contract_ok and self.imports_ok

    def summary(self) -> str:
        """One paragraph naming every problem (empty when ok)."""
        parts: list[str] = []
        if self.parse_error:
            parts.append(self.parse_error)
        parts.extend(str(v) for v in self.contract_errors)
        parts.extend(str(v) for v in self.violations)
        return "; ".join(parts)


def _is_module_base(node: ast.expr) -> bool:
    """Whether a class base spells ``nn.Module``, ``torch.nn.Module`` or ``Module``."""
    if isinstance(node, ast.Name):
        return node.id == "Module"
    if isinstance(node, ast.Attribute) and node.attr == "Module":
        v = node.value
        if isinstance(v, ast.Name) and v.id == "nn":
            return True
        if isinstance(v, ast.Attribute) and v.attr == "nn" and isinstance(v.value, ast.Name) and v.value.id == "torch":
            return True
    return False


def _check_contract(tree: ast.Module) -> list[Violation]:
    """Check 1: ``class Mixer(nn.Module)`` with the contract's ``__init__`` and ``forward``."""
    errors: list[Violation] = []
    mixers = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Mixer"]
    if not mixers:
        return [Violation(1, "class Mixer", "no module-level `class Mixer(nn.Module)` is defined")]
    cls = mixers[-1]
    if not any(_is_module_base(b) for b in cls.bases):
        errors.append(Violation(cls.lineno, "class Mixer", "Mixer must subclass nn.Module"))
    methods = {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    init = methods.get("__init__")
    if init is None:
        errors.append(Violation(cls.lineno, "Mixer.__init__", "missing `__init__(self, d_model, n_heads, **kwargs)`"))
    else:
        a = init.args
        pos = [p.arg for p in a.posonlyargs + a.args]
        if pos[:3] != ["self", "d_model", "n_heads"]:
            errors.append(Violation(init.lineno, "Mixer.__init__",
                                    f"signature must start (self, d_model, n_heads), found ({', '.join(pos)})"))
        n_required = len(pos) - len(a.defaults)
        if n_required > 3:
            errors.append(Violation(init.lineno, "Mixer.__init__",
                                    "extra parameters after n_heads need default values"))
        if any(d is None for d in a.kw_defaults):
            errors.append(Violation(init.lineno, "Mixer.__init__", "keyword-only parameters need default values"))
        if a.kwarg is None:
            errors.append(Violation(init.lineno, "Mixer.__init__", "must accept **kwargs"))
    fwd = methods.get("forward")
    if fwd is None:
        errors.append(Violation(cls.lineno, "Mixer.forward", "missing `forward(self, x)`"))
    else:
        if isinstance(fwd, ast.AsyncFunctionDef):
            errors.append(Violation(fwd.lineno, "Mixer.forward", "forward must not be async"))
        a = fwd.args
        pos = [p.arg for p in a.posonlyargs + a.args]
        if len(pos) < 2 or pos[0] != "self":
            errors.append(Violation(fwd.lineno, "Mixer.forward", "signature must be forward(self, x, ...)"))
        elif len(pos) - len(a.defaults) > 2 or any(d is None for d in a.kw_defaults):
            errors.append(Violation(fwd.lineno, "Mixer.forward", "parameters after x need default values"))
    return errors


def _rooted_at_self(node: ast.expr) -> bool:
    """Whether an attribute chain starts at ``self`` (the candidate's own objects)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "self"


class _Walker(ast.NodeVisitor):
    """Collects allow-list violations."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.imports: list[str] = []
        self._docstrings: set[int] = set()
        self.imported_names: set[str] = set()

    def bad(self, node: ast.AST, construct: str, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0), construct, message))

    # docstrings may mention dunders
    def _mark_docstring(self, body: list[ast.stmt]) -> None:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self._docstrings.add(id(body[0].value))

    def visit_Module(self, node: ast.Module) -> None:
        self._mark_docstring(node.body)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._mark_docstring(node.body)
        if node.keywords:
            for kw in node.keywords:
                if kw.arg == "metaclass":
                    self.bad(node, f"class {node.name}(metaclass=...)", "metaclasses are not allowed")
        for b in node.bases:
            name = b.id if isinstance(b, ast.Name) else (b.attr if isinstance(b, ast.Attribute) else None)
            if name in _FORBIDDEN_BASES:
                self.bad(node, f"class {node.name}({name})", f"subclassing {name} is not allowed (a lying "
                         "str/bytes/path/type subclass can fool trusted code)")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._mark_docstring(node.body)
        if _DUNDER.fullmatch(node.name) and node.name not in ALLOWED_DUNDER_ATTRS:
            self.bad(node, f"def {node.name}", "special methods other than __init__ are not allowed (finalizers, "
                     "attribute hooks and operators run code wherever the object goes)")
        for d in node.decorator_list:
            if isinstance(d, ast.Name) and d.id in ("classmethod", "property", "staticmethod"):
                continue
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.bad(node, f"async def {node.name}", "async functions are not allowed")
        self.generic_visit(node)

    def visit_Await(self, node: ast.Await) -> None:
        self.bad(node, "await", "await is not allowed")

    def visit_Yield(self, node: ast.Yield) -> None:
        self.bad(node, "yield", "generators are not allowed (their frames are an escape route)")

    def visit_YieldFrom(self, node: ast.YieldFrom) -> None:
        self.bad(node, "yield from", "generators are not allowed (their frames are an escape route)")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(alias.name)
            self.imported_names.add(alias.asname or alias.name.split(".")[0])
            if alias.name not in ALLOWED_MODULES:
                self.bad(node, f"import {alias.name}", f"module {alias.name!r} is not in the allow-list "
                         f"({', '.join(sorted(ALLOWED_MODULES - {'__future__'}))})")
            elif alias.name.startswith("training.") and alias.asname is None:
                self.bad(node, f"import {alias.name}",
                         "binds the whole `training` package; write `from training import ops`")
            elif alias.name == "__future__":
                self.bad(node, "import __future__", "use `from __future__ import ...`")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        names = [a.name for a in node.names]
        if node.level:
            self.bad(node, f"from {'.' * node.level}{mod} import ...", "relative imports are not allowed")
            return
        self.imports.append(mod)
        for a in node.names:
            self.imported_names.add(a.asname or a.name)
        if mod == "training":
            # `from training import ops` is the one allowed form
            for n in names:
                if n != "ops":
                    self.bad(node, f"from training import {n}", "only `training.ops` may be imported")
            return
        if mod not in ALLOWED_MODULES:
            self.bad(node, f"from {mod} import {', '.join(names)}", f"module {mod!r} is not in the allow-list")
            return
        for n in names:
            if n == "*":
                self.bad(node, f"from {mod} import *", "star imports are not allowed")
            elif f"{mod}.{n}" in ALLOWED_MODULES:
                continue
            elif n in FORBIDDEN_ATTRS:
                self.bad(node, f"from {mod} import {n}", f"{n!r} is not allowed ({FORBIDDEN_ATTRS[n]})")
            elif n.startswith("_") and mod != "__future__":
                self.bad(node, f"from {mod} import {n}", "private names are not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES:
            self.bad(node, node.id, f"`{node.id}` is not allowed")
        elif _DUNDER.fullmatch(node.id) and not (node.id in ALLOWED_DUNDER_NAMES and isinstance(node.ctx, ast.Load)):
            self.bad(node, node.id, "dunder names are not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _DUNDER.fullmatch(attr) and attr not in ALLOWED_DUNDER_ATTRS:
            self.bad(node, f".{attr}", "dunder attributes are not allowed (no chains through "
                     "__class__/__mro__/__globals__/__subclasses__)")
        elif attr in FORBIDDEN_ATTRS:
            self.bad(node, f".{attr}", f"attribute {attr!r} is not allowed ({FORBIDDEN_ATTRS[attr]})")
        elif attr.startswith("_") and not _DUNDER.fullmatch(attr) and not _rooted_at_self(node.value):
            # private attributes of modules/objects other than the candidate's own (torch._C,
            # torch.serialization._open_file, a.b._c ...)
            where = f"{node.value.id}.{attr}" if isinstance(node.value, ast.Name) else f"....{attr}"
            self.bad(node, where, "private attributes of other objects are not allowed")
        elif attr in _STDLIB_MODULES and not _rooted_at_self(node.value):
            # a module handle reached through another module (typing.operator, dataclasses.sys ...)
            self.bad(node, f".{attr}", f"attribute {attr!r} names a standard-library module (a module handle "
                     "outside the allow-list)")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if isinstance(root, ast.Name) and (root.id in self.imported_names or root.id in _BUILTIN_NAMES):
                self.bad(node, f"{root.id}...{attr} = ...",
                         "assigning to attributes of imported modules or builtins (monkeypatching) is not allowed")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id in ATTR_BUILTINS and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                v = name.value
                if _DUNDER.fullmatch(v) or v in FORBIDDEN_ATTRS or v in FORBIDDEN_NAMES:
                    self.bad(node, f"{f.id}(..., {v!r})", "getattr-style access to a forbidden name")
        if isinstance(f, ast.Name) and f.id == "type" and len(node.args) == 3:
            self.bad(node, "type(name, bases, dict)", "creating classes with type() is not allowed")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and id(node) not in self._docstrings \
                and _DUNDER.search(node.value) and node.value not in ALLOWED_DUNDER_STRINGS:
            self.bad(node, repr(node.value)[:40], "string constants naming dunders are not allowed")

    def visit_Global(self, node: ast.Global) -> None:
        for n in node.names:
            if _DUNDER.fullmatch(n):
                self.bad(node, f"global {n}", "dunder names are not allowed")


def static_check(source: str | bytes) -> StaticReport:
    """Parse ``source`` (never executing it) and apply the contract and the allow-list.

    Never raises on bad input: a syntax error, a null byte, an over-deep nesting or an oversized
    file all come back as ``parse_ok=False`` with a one-line reason naming the line."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            return StaticReport(False, False, False, parse_error=f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    if len(source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        return StaticReport(False, False, False,
                            parse_error=f"file is larger than {MAX_SOURCE_BYTES // 1024} KiB")
    try:
        tree = ast.parse(source, filename="mixer.py", mode="exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        text = (exc.text or "").strip()
        detail = f" near `{text[:60]}`" if text else ""
        return StaticReport(False, False, False, parse_error=f"{where}: syntax error: {exc.msg}{detail}")
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return StaticReport(False, False, False, parse_error=f"does not parse: {type(exc).__name__}: {exc}")
    walker = _Walker()
    try:
        walker.visit(tree)
    except RecursionError:
        walker.violations.append(Violation(0, "nesting", "code is nested too deeply"))
    contract = _check_contract(tree)
    return StaticReport(True, not contract, not walker.violations, contract_errors=contract,
                        violations=walker.violations, imports=sorted(set(walker.imports)))
