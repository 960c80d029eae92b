"""The archive store: one git commit per experiment, in a bare repo (``lab/archive``).

Layout of one experiment commit (docs/ARCHITECTURE.md, "The archive"):

* first parent: the parent experiment's commit (the seed is a root commit); references and the
  rest of the lineage are in trailers;
* files ``mixer.py``, ``motivation.md``, ``analysis.md``, ``metrics.json``, ``record.json``
  (the whole :class:`~archive.record.ExperimentRecord`) and ``train.log``;
* message ``<name>: <one line>``, the motivation, then the trailers ``Experiment-Id``,
  ``Status``, ``Fitness``, ``Parent``, ``References``, ``Researcher``, ``Scale`` (and
  ``Promotion`` when the record carries a promotion verdict);
* tag ``exp/<id>-<slug>`` (a lightweight tag, the commit point); ``refs/heads/main`` (HEAD)
  follows the latest experiment and ``refs/heads/best`` the best accepted one (moved by the
  promotion rule when the record carries its verdict, ``record.promotion``; else the fittest).

Crash safety: objects are written as loose objects by gitdb's pure-Python loose-object
database (gitpython's storage layer; temporary file, then rename), and refs with git's own lock-file protocol (``<ref>.lock``
created exclusively, then renamed over the ref), the experiment's tag first, then ``main`` and
``best``. A kill at any instant leaves either no new experiment or the whole new one;
:meth:`ArchiveStore.recover` removes lock and temporary files of a writer that died and puts
``main``/``best`` right if the kill fell between the tag and them.

Speed: no subprocess per commit; every ``maintenance_every`` commits the loose refs and objects
are packed (``git pack-refs``, ``git repack -d``), which keeps the repo small on disk.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import git
from git.objects.fun import tree_to_stream
from gitdb.base import IStream
from gitdb.db.loose import LooseObjectDB

from archive.record import ExperimentRecord, RecordError, format_id

TAG_PREFIX = "refs/tags/exp/"
MAIN_REF = "refs/heads/main"
BEST_REF = "refs/heads/best"
FILES = ("analysis.md", "metrics.json", "mixer.py", "motivation.md", "record.json", "train.log")
AUTHOR = "asiarch"
AUTHOR_EMAIL = "asiarch@localhost"
_ID_RE = re.compile(r"^(\d{4,})-")

# Fault injection for the crash tests: ASIARCH_TEST_CRASH_AT="<point>:<n>" kills this process
# (SIGKILL) the n-th time it reaches <point> (objects, commit, tag-lock, tag, main-lock, main,
# maintenance). Unset in normal use: one dict lookup per point.
_CRASH_AT = os.environ.get("ASIARCH_TEST_CRASH_AT", "")
_crash_hits: dict[str, int] = {}


def _crash_point(name: str) -> None:
    if not _CRASH_AT:
        return
    point, _, n = _CRASH_AT.partition(":")
    if point == name:
        _crash_hits[name] = _crash_hits.get(name, 0) + 1
        if _crash_hits[name] >= int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class ArchiveError(RuntimeError):
    """The archive cannot do what was asked (unknown id, bad lineage, damaged repo...)."""


@dataclass(frozen=True)
class Entry:
    """What the refs say about one experiment: its id, tag, commit and first parent commit."""

    id: str
    tag: str
    commit: str
    parent_commit: str | None


def _death_signal() -> Any:
    """A ``preexec_fn`` (Linux) that gives a git child SIGKILL when the writer that started it
    dies, so a killed run leaves no ``git repack`` writing into the archive after the next holder
    of the lab lock has cleaned up; None elsewhere. libc's ``prctl`` is looked up here, in the
    parent: the child between fork and exec only calls it (no import, no lock)."""
    global _PRCTL
    if _PRCTL is None:
        _PRCTL = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
            except Exception:  # noqa: BLE001 - no prctl: the child may outlive its parent
                _PRCTL = False
    if not _PRCTL:
        return None
    prctl = _PRCTL
    return lambda: prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


_PRCTL: Any = None


def _run_git(git_dir: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        capture_output=True, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        preexec_fn=_death_signal(),
    )
    if check and proc.returncode != 0:
        raise ArchiveError(f"git {' '.join(args)} failed in {git_dir}: {proc.stderr.strip()}")
    return proc.stdout


class ArchiveStore:
    """The git-backed store of experiment records (the lab's source of truth).

    Writing methods expect the caller to hold the lab lock (``Lab.commit`` does); reading
    methods are safe at any time, also while another process writes.
    """

    def __init__(self, path: str | os.PathLike[str], maintenance_every: int = 1000) -> None:
        self.path = Path(path)
        if not (self.path / "HEAD").is_file() or not (self.path / "objects").is_dir():
            raise ArchiveError(f"{self.path} is not an archive (a bare git repository); create the lab with `asiarch-tui init`")
        self.repo = git.Repo(self.path)
        # Pure-Python loose-object writer (gitpython's own odb.store spawns `git hash-object`).
        self._odb = LooseObjectDB(str(self.path / "objects"))
        self.maintenance_every = maintenance_every
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self._by_commit: dict[str, str] = {}
        self._loose_since_pack = 0
        #: ``score_of(exp_id, committed_fitness) -> fitness``: the current (re-scored) fitness
        #: of an experiment, used for ``best`` (the lab sets it from its score book)
        self.score_of: Callable[[str, float | None], float | None] | None = None
        #: ``promotion_of(exp_id, committed_outcome) -> outcome``: the current promotion outcome
        #: (re-decided when the lab re-scored), used for ``best``
        self.promotion_of: Callable[[str, str | None], str | None] | None = None
        self.refresh()

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> "ArchiveStore":
        """Create an empty bare archive repo at ``path`` (HEAD on ``main``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        git.Repo.init(path, bare=True, initial_branch="main")
        with git.Repo(path).config_writer() as cw:
            cw.set_value("user", "name", AUTHOR)
            cw.set_value("user", "email", AUTHOR_EMAIL)
            cw.set_value("gc", "auto", "0")  # we pack ourselves (maintenance), under the lab lock
        (path / "description").write_text("asiarch experiment archive: one commit per experiment\n")
        return cls(path)

    def close(self) -> None:
        """Stop the persistent ``git cat-file`` processes."""
        self.repo.close()

    # -- refs ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the experiment tags from git (one ``git for-each-ref``)."""
        out = _run_git(self.path, "for-each-ref", "--format=%(objectname) %(refname) %(parent)", TAG_PREFIX)
        entries: dict[str, Entry] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            sha, ref = parts[0], parts[1]
            tag = ref[len("refs/tags/"):]
            m = _ID_RE.match(ref[len(TAG_PREFIX):])
            if not m:
                continue
            entries[m.group(1)] = Entry(m.group(1), tag, sha, parts[2] if len(parts) > 2 else None)
        with self._lock:
            self._entries = dict(sorted(entries.items(), key=lambda kv: int(kv[0])))
            self._by_commit = {e.commit: e.id for e in self._entries.values()}

    def refresh_if_changed(self) -> bool:
        """Re-read the tags only if ``main`` moved since we last looked (another process
        committed). Cheap: one small file read. Returns whether it re-read."""
        with self._lock:
            last = next(reversed(self._entries.values())).commit if self._entries else None
            if self.head() == last:
                return False
            self.refresh()
            return True

    def entries(self) -> list[Entry]:
        """All experiments' ref entries, by id."""
        with self._lock:
            return list(self._entries.values())

    def ids(self) -> list[str]:
        """All experiment ids, ascending."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, exp_id: object) -> bool:
        return exp_id in self._entries

    def entry(self, exp_id: str) -> Entry:
        """The ref entry of ``exp_id``; re-reads the refs once if unknown (another process may
        have committed it)."""
        exp_id = str(exp_id)
        e = self._entries.get(exp_id)
        if e is None:
            self.refresh()
            e = self._entries.get(exp_id)
        if e is None:
            raise ArchiveError(f"no experiment {exp_id} in the archive {self.path}")
        return e

    def commit_of(self, exp_id: str) -> str:
        """The commit sha of experiment ``exp_id``."""
        return self.entry(exp_id).commit

    def id_of_commit(self, sha: str) -> str | None:
        """The experiment id whose commit is ``sha``, if any."""
        return self._by_commit.get(sha)

    def next_id(self) -> str:
        """The id the next experiment gets (one more than the largest; ``0000`` when empty)."""
        with self._lock:
            return format_id(max((int(i) for i in self._entries), default=-1) + 1)

    def _read_ref(self, ref: str) -> str | None:
        p = self.path / ref
        try:
            sha = p.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{40}", sha):
                return sha
        except FileNotFoundError:
            pass
        try:
            for line in (self.path / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        except FileNotFoundError:
            pass
        return None

    def _write_ref(self, ref: str, sha: str, point: str = "") -> None:
        """git's ref protocol: create ``<ref>.lock`` exclusively, write, rename over ``<ref>``."""
        p = self.path / ref
        p.parent.mkdir(parents=True, exist_ok=True)
        lock = p.with_name(p.name + ".lock")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise ArchiveError(
                f"{lock} exists: another git process is updating the archive (or one died; "
                "reopening the lab removes stale locks)"
            ) from None
        try:
            os.write(fd, (sha + "\n").encode())
        finally:
            os.close(fd)
        if point:
            _crash_point(point + "-lock")
        os.replace(lock, p)

    def head(self) -> str | None:
        """The commit ``main`` points at (the latest experiment), or None for an empty archive."""
        return self._read_ref(MAIN_REF)

    def state(self) -> str:
        """A fingerprint of the archive's content (experiment count and latest commit), carried
        by the derived stores to notice when they are stale."""
        with self._lock:
            if not self._entries:
                return "0:"
            last = next(reversed(self._entries.values()))
            return f"{len(self._entries)}:{last.commit}"

    # -- writing -------------------------------------------------------------------------
    def _store(self, kind: bytes, data: bytes) -> bytes:
        return self._odb.store(IStream(kind, len(data), io.BytesIO(data))).binsha

    def commit(self, record: ExperimentRecord) -> str:
        """Write ``record`` as one commit (see the module doc), tag it, move ``main`` and, if it
        is the fittest accepted experiment, ``best``. Returns the commit sha. Failed and rejected
        experiments are committed too. A record with an empty ``id`` gets :meth:`next_id` (under
        the caller's lab lock, so concurrent writers never collide). Raises
        :class:`RecordError` / :class:`ArchiveError` for a bad record, an id that exists, or a
        parent or reference that does not."""
        with self._lock:
            if not record.id:
                record.id = self.next_id()
            record.validate()
            if record.id in self._entries:
                raise ArchiveError(f"experiment {record.id} is already in the archive (ids are never reused)")
            parent_sha = self.entry(record.parent).commit if record.parent is not None else None
            for ref in record.references:
                self.entry(ref)
            files = render_files(record)
            tree_entries = [(self._store(b"blob", files[name]), 0o100644, name) for name in sorted(files)]
            buf = io.BytesIO()
            tree_to_stream(tree_entries, buf.write)
            tree = self._store(b"tree", buf.getvalue()).hex()
            _crash_point("objects")
            sha = self._store(b"commit", render_commit(record, tree, parent_sha)).hex()
            _crash_point("commit")
            # The tag is the commit point; main and best follow.
            self._write_ref(TAG_PREFIX + record.tag[len("exp/"):], sha, "tag")
            _crash_point("tag")
            self._entries[record.id] = Entry(record.id, record.tag, sha, parent_sha)
            self._by_commit[sha] = record.id
            self._write_ref(MAIN_REF, sha, "main")
            _crash_point("main")
            if _moves_best(record, self._best_fitness(), self._current(record.id, record.fitness),
                           self._promotion(record.id, (record.promotion or {}).get("outcome"))):
                self._write_ref(BEST_REF, sha, "best")
                self._best_cache = (sha, record.fitness)
            self._loose_since_pack += 1
            if self.maintenance_every and self._loose_since_pack >= self.maintenance_every:
                self.maintenance()
            return sha

    def maintenance(self) -> None:
        """Pack loose refs and objects (keeps the repo small and ref listing fast). Safe to
        interrupt: git writes packs and ``packed-refs`` atomically."""
        with self._lock:
            _run_git(self.path, "pack-refs", "--all", "--prune")
            _crash_point("maintenance")
            _run_git(self.path, "repack", "-d", "-q")
            self._loose_since_pack = 0

    _best_cache: tuple[str, float | None] | None = None

    def _best_fitness(self) -> float | None:
        sha = self._read_ref(BEST_REF)
        if sha is None:
            return None
        if self._best_cache and self._best_cache[0] == sha:
            return self._best_cache[1]
        fit = parse_trailers(self.message(sha)).get("Fitness")
        val = float(fit) if fit not in (None, "", "none") else None
        exp_id = self._by_commit.get(sha)
        if exp_id is not None:
            val = self._current(exp_id, val)
        self._best_cache = (sha, val)
        return val

    def _current(self, exp_id: str, committed: float | None) -> float | None:
        return committed if self.score_of is None else self.score_of(exp_id, committed)

    def _promotion(self, exp_id: str, committed: str | None) -> str | None:
        return committed if self.promotion_of is None else self.promotion_of(exp_id, committed)

    def move_best(self, exp_id: str | None) -> bool:
        """Point ``best`` at ``exp_id`` (None: remove it, nothing is scored); call with the lab
        lock held, after a re-score. Returns whether it moved."""
        with self._lock:
            self._best_cache = None
            current = self._read_ref(BEST_REF)
            if exp_id is None:
                if current is None:
                    return False
                _run_git(self.path, "update-ref", "-d", BEST_REF)
                return True
            sha = self.commit_of(exp_id)
            if current == sha:
                return False
            self._write_ref(BEST_REF, sha, "best")
            return True

    # -- recovery ------------------------------------------------------------------------
    def stale_files(self) -> list[Path]:
        """Lock files and temporary object files that a writer leaves only if it dies."""
        out: list[Path] = []
        # packed-refs.new: git pack-refs' temporary file beside its lock (left when it is killed)
        for name in ("HEAD.lock", "index.lock", "packed-refs.lock", "packed-refs.new", "config.lock", "shallow.lock"):
            if (self.path / name).exists():
                out.append(self.path / name)
        out.extend(p for p in (self.path / "refs").rglob("*.lock"))
        objects = self.path / "objects"
        out.extend(p for p in objects.glob("obj*") if p.is_file())  # gitdb's temporary objects
        out.extend(p for p in objects.glob("tmp_obj_*") if p.is_file())
        out.extend(p for p in (objects / "pack").glob("tmp_*"))
        out.extend(p for p in (objects / "pack").glob(".tmp-*"))
        return out

    def recover(self, remove_stale: bool) -> list[str]:
        """Make the repo usable after a writer died (call with the lab lock held). With
        ``remove_stale`` (the lab lock says its previous holder died), lock and temporary files
        are removed; then ``main`` and ``best`` are checked against the tags and put right.
        Returns what was done (for a log line)."""
        done: list[str] = []
        if remove_stale:
            for p in self.stale_files():
                try:
                    p.unlink()
                    done.append(f"removed stale {p.relative_to(self.path)}")
                except FileNotFoundError:
                    pass
        self.refresh()
        if not self._entries:
            return done
        last = next(reversed(self._entries.values()))
        if self.head() != last.commit:
            self._write_ref(MAIN_REF, last.commit)
            done.append(f"moved main to experiment {last.id}")
        best = self.compute_best()
        if best is not None and self._read_ref(BEST_REF) != self.commit_of(best):
            self._write_ref(BEST_REF, self.commit_of(best))
            done.append(f"moved best to experiment {best}")
        return done

    def compute_best(self) -> str | None:
        """The id of ``best`` as the commits decided it, replayed in id order: an experiment with a
        promotion outcome (the ``Promotion`` trailer, or the re-scored one through
        :attr:`promotion_of`) moves ``best`` exactly when it is ``promoted``; one without (made
        before the promotion rule) when its fitness (re-scored through :attr:`score_of` when the
        lab set it) is higher."""
        best_id, best_fit = None, None
        for e in self.entries():
            t = parse_trailers(self.message(e.commit))
            if t.get("Status") != "accepted" or t.get("Promotion") == "scale":
                continue  # a climb to a higher scale (agents.climb) is scored on another yardstick
            if t.get("Fitness") in (None, "", "none"):
                f = self._current(e.id, None)
                if f is not None and (best_fit is None or f > best_fit):
                    best_id, best_fit = e.id, f
                continue
            f = self._current(e.id, float(t["Fitness"]))
            if f is None:
                continue
            promo = self._promotion(e.id, t.get("Promotion"))
            if promo is not None:
                if promo == "promoted":
                    best_id, best_fit = e.id, f
            elif best_fit is None or f > best_fit:
                best_id, best_fit = e.id, f
        return best_id

    # -- reading -------------------------------------------------------------------------
    def _data(self, spec: str) -> bytes:
        with self._lock:
            try:
                _, _, _, data = self.repo.git.get_object_data(spec)
            except ValueError as exc:
                raise ArchiveError(f"cannot read {spec} from the archive: {exc}") from None
            return data

    def message(self, sha: str) -> str:
        """The commit message of ``sha``."""
        raw = self._data(sha).decode("utf-8", "replace")
        return raw.split("\n\n", 1)[1] if "\n\n" in raw else ""

    def read_file(self, exp_id: str, name: str) -> bytes:
        """One file of an experiment's commit (``mixer.py``, ``record.json``...)."""
        return self._data(f"{self.commit_of(exp_id)}:{name}")

    def get(self, exp_id: str) -> ExperimentRecord:
        """The record of experiment ``exp_id`` (from its ``record.json``)."""
        return ExperimentRecord.from_dict(json.loads(self.read_file(str(exp_id), "record.json")))

    def by_tag(self, tag: str) -> ExperimentRecord:
        """The record tagged ``tag`` (``exp/0003-gated-delta`` or ``0003-gated-delta``)."""
        name = tag[len("refs/tags/"):] if tag.startswith("refs/tags/") else tag
        name = name if name.startswith("exp/") else "exp/" + name
        for e in self.entries():
            if e.tag == name:
                return self.get(e.id)
        self.refresh()
        for e in self.entries():
            if e.tag == name:
                return self.get(e.id)
        raise ArchiveError(f"no experiment tagged {name} in the archive {self.path}")

    def parent_id(self, exp_id: str) -> str | None:
        """The parent experiment's id, from the commit's first parent."""
        pc = self.entry(exp_id).parent_commit
        return self._by_commit.get(pc) if pc else None

    def children(self, exp_id: str) -> list[str]:
        """Ids of the experiments whose commit's first parent is ``exp_id``'s commit."""
        sha = self.commit_of(exp_id)
        return [e.id for e in self.entries() if e.parent_commit == sha]

    def children_map(self) -> dict[str | None, list[str]]:
        """{parent id (None for roots): [child ids ascending]} for the whole archive."""
        out: dict[str | None, list[str]] = {}
        for e in self.entries():
            pid = self._by_commit.get(e.parent_commit) if e.parent_commit else None
            out.setdefault(pid, []).append(e.id)
        return out

    def path_to_root(self, exp_id: str) -> list[str]:
        """``[exp_id, parent, grandparent, ..., root]`` following first parents."""
        path = [str(exp_id)]
        seen = {path[0]}
        while True:
            p = self.parent_id(path[-1])
            if p is None or p in seen:
                return path
            path.append(p)
            seen.add(p)

    def all(self) -> Iterator[ExperimentRecord]:
        """Every record, by id."""
        for e in self.entries():
            yield self.get(e.id)

    def best_id(self) -> str | None:
        """The id of ``refs/heads/best`` (no record read), or None."""
        sha = self._read_ref(BEST_REF)
        if sha is None:
            return None
        exp_id = self._by_commit.get(sha)
        if exp_id is None:
            self.refresh()
            exp_id = self._by_commit.get(sha)
        return exp_id

    def best(self) -> ExperimentRecord | None:
        """The best accepted experiment (``refs/heads/best``), or None."""
        exp_id = self.best_id()
        return self.get(exp_id) if exp_id else None


def _is_better(record: ExperimentRecord, best: float | None, fitness: float | None = None) -> bool:
    fitness = record.fitness if fitness is None else fitness
    return record.status == "accepted" and fitness is not None and (best is None or fitness > best)


def _moves_best(record: ExperimentRecord, best: float | None, fitness: float | None = None,
                outcome: str | None = None) -> bool:
    """Whether committing ``record`` moves ``best``: the promotion rule's verdict when the record
    carries one (``record.promotion``, decided by the loop; ``outcome`` overrides it), else the
    higher fitness (``fitness``: the current one, default the committed)."""
    fitness = record.fitness if fitness is None else fitness
    if outcome is not None or (record.promotion and "promoted" in record.promotion):
        promoted = outcome == "promoted" if outcome is not None else bool(record.promotion["promoted"])
        return record.status == "accepted" and fitness is not None and promoted
    return _is_better(record, best, fitness)


def _dump(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _text(s: str) -> bytes:
    return (s if not s or s.endswith("\n") else s + "\n").encode("utf-8")


def render_files(record: ExperimentRecord) -> dict[str, bytes]:
    """The files of an experiment's commit, by name."""
    return {
        "mixer.py": _text(record.code),
        "motivation.md": _text(record.motivation),
        "analysis.md": _text(record.analysis),
        "metrics.json": _dump(record.metrics),
        "record.json": _dump(record.to_dict()),
        "train.log": _text(record.train_log),
    }


def _epoch(created: str) -> int:
    try:
        dt = _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    return int(dt.timestamp())


def _fitness_str(f: float | None) -> str:
    return "none" if f is None else f"{f:.6f}"


def render_commit(record: ExperimentRecord, tree: str, parent: str | None) -> bytes:
    """The raw commit object of ``record`` (deterministic: same record, same sha)."""
    ts = _epoch(record.created)
    who = record.researcher.replace("<", "").replace(">", "").strip() or AUTHOR
    lines = [f"tree {tree}"]
    if parent:
        lines.append(f"parent {parent}")
    lines.append(f"author {who} <{AUTHOR_EMAIL}> {ts} +0000")
    lines.append(f"committer {AUTHOR} <{AUTHOR_EMAIL}> {ts} +0000")
    body = record.motivation.strip()
    if len(body) > 4000:
        body = body[:4000].rstrip() + "\n[...]"
    # Keep the trailer block unambiguous: no "Key: value" paragraph in the body can be the last.
    trailers = [
        f"Experiment-Id: {record.id}",
        f"Status: {record.status}",
        f"Fitness: {_fitness_str(record.fitness)}",
        f"Parent: {record.parent or 'none'}",
        f"References: {', '.join(record.references) if record.references else 'none'}",
        f"Researcher: {record.researcher}",
        f"Scale: {record.scale or 'none'}",
    ]
    if record.promotion and "promoted" in record.promotion:
        trailers.append(f"Promotion: {'promoted' if record.promotion['promoted'] else record.promotion.get('outcome') or 'not promoted'}")
    msg = record.summary_line() + "\n\n" + (body + "\n\n" if body else "") + "\n".join(trailers) + "\n"
    return ("\n".join(lines) + "\n\n" + msg).encode("utf-8")


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Key: value`` trailers of the last paragraph of a commit message."""
    paras = [p for p in message.strip().split("\n\n") if p.strip()]
    if not paras:
        return {}
    out: dict[str, str] = {}
    for line in paras[-1].splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out[k.strip()] = v.strip()
    return out


__all__ = ["ArchiveStore", "ArchiveError", "Entry", "RecordError", "parse_trailers", "render_files", "render_commit"]
