"""Rendering of the lineage (parent → children) as a rich tree, and a fitness sparkline.

A run of single-child descendants (a chain) is one node of the tree, one line per experiment
(``↳`` marks a child of the line above), so the tree only nests where an experiment has several
children; deeper than ``max_depth`` branchings, a subtree is summarised by its size.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from rich.tree import Tree

_STATUS_STYLE = {"accepted": "green", "failed": "red", "rejected": "yellow"}
_BARS = "▁▂▃▄▅▆▇█"


def node_label(doc: dict[str, Any], best_id: str | None = None) -> Text:
    """One line: ``0003 name  accepted  0.612 ★``."""
    t = Text()
    t.append(doc["id"], style="bold cyan")
    t.append(" " + doc.get("name", ""))
    status = doc.get("status", "")
    t.append(f"  {status}", style=_STATUS_STYLE.get(status, ""))
    fit = doc.get("fitness")
    t.append(f"  {fit:.3f}" if fit is not None else "  –", style="magenta")
    if fit is not None and doc.get("fitness_std") is not None and int(doc.get("n_seeds") or 0) >= 2:
        t.append(f" ± {doc['fitness_std']:.3f} ({int(doc['n_seeds'])} seeds)", style="magenta")
    if best_id is not None and doc["id"] == best_id:
        t.append(" ★ best", style="bold yellow")
    return t


def lineage_tree(docs: list[dict[str, Any]], children: dict[str | None, list[str]],
                 root: str | None = None, best_id: str | None = None, max_depth: int = 24,
                 title: str | None = None) -> Tree:
    """The lineage as a :class:`rich.tree.Tree`. ``children`` maps a parent id (None for the
    roots) to its children's ids; ``docs`` are index documents (id, name, status, fitness);
    ``root`` limits the tree to one experiment's descendants."""
    by_id = {d["id"]: d for d in docs}
    size: dict[str, int] = {}
    for i in sorted(by_id, key=int, reverse=True):
        size[i] = 1 + sum(size.get(k, 1) for k in children.get(i, []))
    starts = [root] if root is not None else list(children.get(None, []))
    tree = Tree(title or f"lineage ({len(by_id)} experiments)", guide_style="dim")
    stack: list[tuple[str, Tree, int]] = [(s, tree, 0) for s in reversed(starts)]
    while stack:
        node, container, depth = stack.pop()
        label = node_label(by_id.get(node, {"id": node}), best_id)
        kids = children.get(node, [])
        while len(kids) == 1:
            node = kids[0]
            label.append("\n↳ ", style="dim")
            label.append_text(node_label(by_id.get(node, {"id": node}), best_id))
            kids = children.get(node, [])
        t = container.add(label)
        if not kids:
            continue
        if depth + 1 >= max_depth:
            n = sum(size.get(k, 1) for k in kids)
            t.add(Text(f"… {len(kids)} branches, {n} experiments (show them with --from {node})", style="dim"))
            continue
        for k in reversed(kids):
            stack.append((k, t, depth + 1))
    return tree


def sparkline(values: list[float | None], width: int = 60) -> str:
    """Unicode block sparkline of the last ``width`` values (``·`` for a missing one)."""
    vals = values[-width:]
    nums = [v for v in vals if v is not None]
    if not nums:
        return "·" * len(vals)
    lo, hi = min(nums), max(nums)
    span = hi - lo or 1.0
    return "".join("·" if v is None else _BARS[min(len(_BARS) - 1, int((v - lo) / span * (len(_BARS) - 1) + 0.5))]
                   for v in vals)


def best_over_time(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``best`` after each experiment, replayed from index documents in id order: ``[{id,
    best, fitness, lower}]`` where ``best`` is the id of the best design so far (None before the
    first), ``fitness`` its fitness and ``lower`` the lower end of its fitness interval (its
    fitness when it has none). A document with a ``promotion`` outcome moves ``best`` exactly
    when it is ``promoted``; one without (made before the promotion rule) when its fitness is
    higher: the same rule as the archive's ``best`` ref."""
    out: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for d in sorted(docs, key=lambda d: int(d["id"])):
        f = d.get("fitness")
        if d.get("status") == "accepted" and f is not None:
            promo = d.get("promotion")
            if promo is not None:
                if promo == "promoted":
                    best = d
            elif best is None or f > best["fitness"]:
                best = d
        if best is None:
            out.append({"id": d["id"], "best": None, "fitness": None, "lower": None})
        else:
            iv = best.get("fitness_interval")
            out.append({"id": d["id"], "best": best["id"], "fitness": best["fitness"],
                        "lower": float(iv[0]) if iv else best["fitness"]})
    return out
