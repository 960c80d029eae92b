"""Widgets of the research console: the lineage tree and the experiment tabs (the running panel,
the plots and the status bar are in :mod:`asiarch_tui.panels`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import (
    DataTable,
    Markdown,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
    Tree,
)
from textual.message import Message

from archive.record import SEED_ID

STATUS_STYLE = {"accepted": "green", "failed": "red", "rejected": "yellow", "too_slow": "magenta",
                "stopped_early": "blue", "running": "cyan"}
#: How a status reads in the tree (the others as they are)
STATUS_TEXT = {"stopped_early": "stopped early at half-way"}


def fmt_fitness(value: float | None) -> str:
    """A fitness for display: three decimals, or an em dash when unmeasured."""
    return "—" if value is None else f"{value:.3f}"


def fmt_fitness_spread(rec: Mapping[str, Any]) -> str:
    """``fitness ± spread (n seeds)`` for a design measured on several seeds, else the fitness."""
    f, sd, n = rec.get("fitness"), rec.get("fitness_std"), rec.get("n_seeds")
    if sd is None and rec.get("fitness_seeds"):  # a whole record rather than an index document
        vals = [float(v) for v in rec["fitness_seeds"].values()]
        n = len(vals)
        if n >= 2:
            m = sum(vals) / n
            sd = (sum((v - m) ** 2 for v in vals) / (n - 1)) ** 0.5
    if f is None or sd is None or not n or int(n) < 2:
        return fmt_fitness(f)
    return f"{f:.3f} ± {sd:.3f} ({int(n)} seeds)"


#: What the promotion rule said about a design, for people.
PROMOTION_TEXT = {"promoted": "promoted to best", "tied": "tied with best (within noise)",
                  "below": "below best", "single_seed": "one seed: not compared with best"}


def node_label(rec: Mapping[str, Any], best_id: str | None, reached: Iterable[str] = ()) -> Text:
    """The tree label of one experiment: id, name, fitness, coloured by status, best starred;
    a design re-evaluated at higher scales (``reached``: their names, by ``asiarch-tui verify``)
    gets a ``⇡scale`` badge, and such a re-evaluation an ``@scale`` badge."""
    status = rec.get("status", "accepted")
    text = Text()
    if rec.get("id") == best_id:
        text.append("★ ", style="bold yellow")
    text.append(f"{rec.get('id', '?')} ", style="dim")
    text.append(str(rec.get("name", "?")), style=STATUS_STYLE.get(status, "white"))
    role = seed_role(rec)
    if role:  # the seed and its measurement carry the same name: say which is which
        text.append(f" ({role})", style="italic")
    text.append(" · ", style="dim")
    # only an accepted experiment has a fitness (an older archive stored one for failures)
    text.append(fmt_fitness_spread(rec) if status == "accepted" else "—",
                style="bold" if status == "accepted" else "dim")
    if rec.get("promotion") == "tied" and rec.get("id") != best_id:
        text.append(" ≈best", style="dim yellow")
    if rec.get("promotion") == "scale":
        text.append(f" @{rec.get('scale')}", style="bold magenta")
    for scale in reached:
        text.append(f" ⇡{scale}", style="magenta")
    if status != "accepted":
        text.append(f" ({STATUS_TEXT.get(status, status)})", style="dim " + STATUS_STYLE.get(status, ""))
    return text


def seed_role(rec: Mapping[str, Any]) -> str:
    """``"seed"`` for the lab's seed design, ``"seed, measured at SCALE"`` for its measurement
    (a record that re-measures the seed), else ``""``."""
    if str(rec.get("id")) == SEED_ID:
        return "seed"
    if rec.get("measures") == SEED_ID:
        return f"seed, measured at {rec['scale']}" if rec.get("scale") else "seed, measured"
    return ""


def is_experiment(rec: Mapping[str, Any]) -> bool:
    """Whether an index document is an experiment the loop ran (not the seed, not its measurement)."""
    return not seed_role(rec)


class LineageTree(Tree):
    """The lineage of every experiment in the lab; each node's ``data`` is the experiment id.

    Its keys act on the selected node: ``f`` posts :class:`ForkRequested`, ``g``
    :class:`GitShowRequested` (the console forks the loop / shows the commit)."""

    BINDINGS = [
        Binding("f", "fork", "fork", tooltip="fork: the next experiment's parent is the selected node"),
        Binding("g", "git_show", "git show", tooltip="git show the selected experiment's commit"),
    ]

    class ForkRequested(Message):
        """The user asked that the next experiment's parent be ``exp_id``."""

        def __init__(self, exp_id: str) -> None:
            super().__init__()
            self.exp_id = exp_id

    class GitShowRequested(Message):
        """The user asked for the commit of ``exp_id``."""

        def __init__(self, exp_id: str) -> None:
            super().__init__()
            self.exp_id = exp_id


    def __init__(self, **kwargs: Any) -> None:
        super().__init__("lab", **kwargs)
        self.border_title = "lineage"
        self.guide_depth = 2
        self.show_root = False
        self._exp_nodes: dict[str, Any] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._reached: dict[str, list[str]] = {}  # design id -> higher scales it was evaluated at
        self.best_id: str | None = None

    def _label(self, exp_id: str) -> Text:
        return node_label(self._records[exp_id], self.best_id, self._reached.get(exp_id, ()))

    def load(self, records: Iterable[Mapping[str, Any]], best_id: str | None) -> None:
        """Rebuild the tree from experiment summaries (dicts with id, name, parent, status, fitness)."""
        self.clear()
        self._exp_nodes.clear()
        self._records = {}
        self._reached = {}
        self.best_id = best_id
        pending = sorted((dict(r) for r in records), key=lambda r: str(r.get("id")))
        for rec in pending:
            self.add_record(rec, refresh_best=False)
        self.root.expand_all()

    def add_record(self, rec: Mapping[str, Any], refresh_best: bool = True) -> None:
        """Add (or update) one experiment node under its parent (the root if the parent is unknown)."""
        rec = dict(rec)
        exp_id = str(rec["id"])
        self._records[exp_id] = rec
        if rec.get("promotion") == "scale" and rec.get("parent") and rec.get("scale"):
            pid = str(rec["parent"])
            reached = self._reached.setdefault(pid, [])
            if rec["scale"] not in reached:
                reached.append(str(rec["scale"]))
                if pid in self._exp_nodes:
                    self._exp_nodes[pid].set_label(self._label(pid))
        if exp_id in self._exp_nodes:
            self._exp_nodes[exp_id].set_label(self._label(exp_id))
        else:
            parent = self._exp_nodes.get(str(rec.get("parent"))) if rec.get("parent") else None
            node = (parent or self.root).add(self._label(exp_id), data=exp_id, expand=True)
            self._exp_nodes[exp_id] = node
            (parent or self.root).expand()
        if refresh_best:
            self.set_best(self.best_id)

    def set_best(self, best_id: str | None) -> None:
        """Mark ``best_id`` with a star (relabels the old and the new best)."""
        old, self.best_id = self.best_id, best_id
        for i in {old, best_id} - {None}:
            if i in self._exp_nodes:
                self._exp_nodes[i].set_label(self._label(i))

    def select_id(self, exp_id: str) -> None:
        """Move the cursor to the node of ``exp_id``."""
        node = self._exp_nodes.get(exp_id)
        if node is not None:
            self.move_cursor(node)

    @property
    def selected_id(self) -> str | None:
        """The experiment id under the cursor."""
        node = self.cursor_node
        return node.data if node is not None else None

    @property
    def experiment_ids(self) -> set[str]:
        """The ids of every experiment node."""
        return set(self._exp_nodes)

    def parent_of(self, exp_id: str) -> str | None:
        """The experiment id of ``exp_id``'s parent node (None under the root)."""
        node = self._exp_nodes[exp_id].parent
        return node.data if node is not None else None

    def label_of(self, exp_id: str) -> str:
        """The plain text of ``exp_id``'s node label."""
        return self._exp_nodes[exp_id].label.plain

    def action_fork(self) -> None:
        """f: fork from the selected node."""
        if self.selected_id is not None:
            self.post_message(self.ForkRequested(self.selected_id))
        else:
            self.notify("select an experiment to fork from")

    def action_git_show(self) -> None:
        """g: show the selected node's commit."""
        if self.selected_id is not None:
            self.post_message(self.GitShowRequested(self.selected_id))


class ExperimentTabs(Vertical):
    """The selected experiment: motivation, code, analysis, metrics, transcript."""


    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabbed"):
            with TabPane("Motivation", id="tab-motivation"):
                with VerticalScroll():
                    yield Markdown("", id="motivation")
            with TabPane("Code", id="tab-code"):
                with VerticalScroll(id="code-scroll"):
                    yield Static("", id="code-view")
            with TabPane("Analysis", id="tab-analysis"):
                with VerticalScroll():
                    yield Markdown("", id="analysis")
            with TabPane("Metrics", id="tab-metrics"):
                yield DataTable(id="metrics", zebra_stripes=True)
            with TabPane("Transcript", id="tab-transcript"):
                yield RichLog(id="transcript-view", wrap=True, markup=False)

    def show(self, rec: Mapping[str, Any] | None, parent: Mapping[str, Any] | None,
             baselines: Mapping[str, Mapping[str, Any]]) -> None:
        """Fill every tab from an experiment record (dict), its parent and the baselines."""
        if rec is None:
            return
        shown = fmt_fitness_spread(rec) if rec.get("status") == "accepted" else "—"
        title = f"# {rec.get('name', '?')}  \n`{rec.get('id')}` · {rec.get('status')} · fitness {shown}"
        unscored = (rec.get("fitness_components") or {}).get("unscored")
        if rec.get("fitness") is None and unscored:
            title += f" (not scored: {unscored})"
        iv = rec.get("fitness_interval")
        if iv:
            title += f" · 90% interval [{iv[0]:.3f}, {iv[1]:.3f}]"
        promo = (rec.get("promotion") or {}).get("outcome")
        if promo in PROMOTION_TEXT:
            title += f" · {PROMOTION_TEXT[promo]}"
        self.query_one("#motivation", Markdown).update(title + "\n\n" + (rec.get("motivation") or "_no motivation_"))
        code = rec.get("code") or ""
        self.query_one("#code-view", Static).update(Syntax(code, "python", line_numbers=True, word_wrap=False))
        self.query_one("#analysis", Markdown).update(rec.get("analysis") or "_not analysed yet_")
        table = self.query_one("#metrics", DataTable)
        table.clear(columns=True)
        cols = ["metric", "this", "parent", *baselines.keys()]
        table.add_columns(*cols)
        for key, label in metric_rows(rec.get("metrics") or {}):
            row = [label, metric_value(rec.get("metrics"), key), metric_value(parent.get("metrics") if parent else None, key)]
            row += [metric_value(b, key) for b in baselines.values()]
            table.add_row(*row)
        comps = rec.get("fitness_components") or {}
        for comp in ("s_loss", "s_score", "s_judge"):
            if comp in comps:
                table.add_row(comp, f"{comps[comp]:.3f}", "", *["" for _ in baselines])
        log = self.query_one("#transcript-view", RichLog)
        log.clear()
        for call in rec.get("transcript") or []:
            log.write(Text(f"── {call.get('role')} · {call.get('model')} · {call.get('duration_s') or 0:.1f}s", style="bold cyan"))
            if call.get("prompt"):
                log.write(Text(str(call["prompt"])[:4000], style="dim"))
            log.write(Text(str(call.get("reply", ""))[:8000]))


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (key, label) rows of the metrics table: losses, speed, then each probe."""
    rows = [("val_bpb", "val bits/byte"), ("val_loss", "val loss"), ("probe_mean", "probe mean")]
    if metrics.get("partial"):  # a run a guard (or the monitor) ended: the partial mean, labelled
        rows += [("probe_mean_partial", "probe mean (partial)"), ("probes_done", "probes done"),
                 ("stop_reason", "stopped by")]
    rows += [("params", "params"), ("tokens_per_s", "tokens/s"), ("train_seconds", "train s"),
             ("cpu_seconds", "CPU s"), ("wall_seconds", "wall s"), ("throughput_vs_seed", "throughput vs seed")]
    rows += [(f"probes.{p}", f"probe {p}") for p in sorted((metrics.get("probes") or {}).keys())]
    if metrics.get("benchmark_kind") == "lm_eval":  # the benchmark term: the mean lm-eval task score
        tasks = ((metrics.get("lm_eval") or {}).get("tasks") or {}) if isinstance(metrics.get("lm_eval"), Mapping) else {}
        rows += [("benchmark", "lm-eval mean")] + [(f"lm_eval.tasks.{t}.score", f"lm-eval {t}") for t in tasks]
    return rows


def metric_value(metrics: Mapping[str, Any] | None, key: str) -> str:
    """Look up a dotted key in a metrics dict and format it (``mean ± std (n)`` when the dict
    has the metric's spread over several seeds)."""
    spread = ((metrics or {}).get("spread") or {}).get(key) if isinstance((metrics or {}).get("spread"), Mapping) else None
    if isinstance(spread, Mapping) and int(spread.get("n") or 0) >= 2 and spread.get("std") is not None:
        return f"{spread['mean']:.4g} ± {spread['std']:.2g} ({int(spread['n'])})"
    cur: Any = metrics or {}
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return "—"
        cur = cur[part]
    if cur is None:
        return "—"
    if isinstance(cur, float):
        return f"{cur:.4g}"
    return str(cur)


def checks_table(checks: Iterable[Mapping[str, Any]]) -> Table:
    """A rich table of check results (name, pass, value, reason)."""
    table = Table(box=None, expand=True)
    for col in ("check", "", "value", "reason"):
        table.add_column(col)
    for c in checks:
        ok = c.get("passed")
        table.add_row(str(c.get("name")), Text("✔" if ok else "✘", style="green" if ok else "red"),
                      str(c.get("value", "")), str(c.get("reason", "")))
    return table

