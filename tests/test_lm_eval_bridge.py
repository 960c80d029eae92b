"""The lm-eval bridge (training/lm_eval_bridge.py) and the shipped tasks (training/lm_tasks)."""

from __future__ import annotations

import os

# belt and braces (effective if `datasets` is not imported yet); the `no_network` fixture below
# is what proves that the offline runs never open a connection
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fnmatch
import json
import math
import socket
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from training.lm_eval_bridge import (
    DEFAULT_TASKS,
    PROBE_TASKS,
    SHAKESPEARE_TASKS,
    TASKS_DIR,
    ByteLM,
    needs_hub,
    run_lm_eval,
    task_manager,
)
from training.lm_tasks.generate import generate_task_data

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
NL = 10  # the prefix byte standing in for an empty context


class TinyCausal(nn.Module):
    """An untrained byte model: embedding, causal depthwise conv (k=4), a causal running mean
    (so every earlier byte matters), MLP head. Deterministic given the seed."""

    def __init__(self, d: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(256, d)
        self.conv = nn.Conv1d(d, d, 4, groups=d)
        self.out = nn.Linear(2 * d, 256)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(max(1, p.shape[-1]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        c = self.conv(F.pad(h.transpose(1, 2), (3, 0))).transpose(1, 2)
        mean = h.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[None, :, None]
        return self.out(torch.tanh(torch.cat([c, mean], -1))) * 3.0


class NextLetter(nn.Module):
    """A hand-made causal 'model': after byte b it is sure the next byte is b + 1 (wrapping
    inside 'a'..'z'; any other byte is followed by 'a'). Its greedy text is known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        is_letter = (x >= 97) & (x <= 122)
        nxt = torch.where(is_letter, (x - 97 + 1) % 26 + 97, torch.full_like(x, 97))
        return F.one_hot(nxt, 256).float() * 20.0


def _ll(args):
    return [Instance("loglikelihood", {}, a, i) for i, a in enumerate(args)]


def _direct_logprobs(model: nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).float(), -1)[0]


def _direct_cont(model: nn.Module, context: bytes, cont: bytes, max_length: int) -> tuple[float, bool]:
    """Score a continuation that fits in the window from one forward pass."""
    full = (list(context) or [NL]) + list(cont)
    inp = full[:-1][-max_length:]
    lp = _direct_logprobs(model, inp)[-len(cont):]
    tgt = torch.tensor(list(cont))
    return float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all())



@pytest.fixture(scope="module")
def tiny() -> TinyCausal:
    torch.manual_seed(0)
    return TinyCausal().eval()


def test_loglikelihood_equals_direct_computation(tiny):
    lm = ByteLM(tiny, max_length=64, batch_size=3)
    long_context = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 3
    requests = [
        ("To be, or not to be", ", that is the question"),
        ("", "Hello"),  # empty context -> prefix byte
        ("a", "b"),
        (long_context, " And all the clouds"),  # context longer than max_length: left-truncated
        ("caf\u00e9 ", "cr\u00e8me"),  # multi-byte UTF-8
        ("x" * 10, "y" * 30),
    ]
    got = lm.loglikelihood(_ll(requests))
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = _direct_cont(tiny, ctx.encode(), cont.encode(), 64)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy
    # batching and padding change nothing
    one = ByteLM(tiny, max_length=64, batch_size=1, pad_multiple=16).loglikelihood(_ll(requests))
    for (a, ga), (b, gb) in zip(got, one):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    # the left truncation really happened: a shorter window gives a different score
    short = ByteLM(tiny, max_length=16).loglikelihood(_ll([requests[3]]))[0][0]
    assert abs(short - got[3][0]) > 1e-3


def test_is_greedy_true_exactly_for_the_argmax_continuation(tiny):
    lm = ByteLM(tiny, max_length=64)
    ctx = "Friends, Romans, countrymen"
    ids = list(ctx.encode())
    greedy = []
    for _ in range(6):
        greedy.append(int(_direct_logprobs(tiny, ids + greedy)[-1].argmax()))
    cont = bytes(greedy)
    other = bytes(greedy[:-1] + [(greedy[-1] + 1) % 256])
    res = lm.score_bytes([(ctx.encode(), cont), (ctx.encode(), other)])
    assert res[0][1] is True and res[1][1] is False
    assert res[0][0] > res[1][0]


class Dropped(nn.Module):
    """``tiny`` with dropout on its logits (random in training mode) and 44 extra non-byte ids."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.drop = inner, nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.drop(self.inner(x))
        return torch.cat([logits, torch.full((*logits.shape[:2], 44), 50.0)], -1)


def test_scoring_runs_in_eval_mode_over_byte_logits(tiny):
    model = Dropped(tiny).train()
    lm = ByteLM(model, max_length=64)
    pairs = [(b"Alas, poor Yorick", b"! I knew him")]
    first, second = lm.score_bytes(pairs), lm.score_bytes(pairs)
    assert first == second and model.training  # no dropout while scoring; mode restored
    # ids >= 256 are not text: the distribution is renormalised over the 256 bytes
    assert first[0][0] == pytest.approx(_direct_cont(tiny, *pairs[0], 64)[0], abs=1e-4)
    assert lm.generate_until(_gen([("Alas", {"max_gen_toks": 3})])) == ByteLM(tiny).generate_until(
        _gen([("Alas", {"max_gen_toks": 3})])
    )
    with pytest.raises(ValueError, match="vocab >= 256"):
        ByteLM(lambda x: torch.zeros(*x.shape, 100)).score_bytes(pairs)


def test_long_continuation_is_scored_in_windows(tiny):
    lm = ByteLM(tiny, max_length=32)
    ctx, cont = b"Once more unto the breach", bytes(range(97, 123)) * 4  # 104 bytes > 32
    (ll, _), = lm.score_bytes([(ctx, cont)])
    full = list(ctx) + list(cont)
    want = 0.0
    for a in range(len(ctx), len(full), 32):  # pieces of 32 targets, each with the 32 bytes before its end
        b = min(len(full), a + 32)
        inp = full[max(0, b - 1 - 32) : b - 1]
        lp = _direct_logprobs(tiny, inp)[-(b - a) :]
        want += float(lp.gather(-1, torch.tensor(full[a:b])[:, None]).sum())
    assert ll == pytest.approx(want, abs=1e-3)


def test_bridge_on_the_backbone_with_the_seed_mixer():
    """The real byte-level LanguageModel with the chunked DeltaNet seed mixer: lengths that are
    not multiples of the chunk size, right padding in mixed-length batches, windowed scoring."""
    from training.backbone import LanguageModel
    from training.loader import load_mixer_class
    from training.mixers import REFERENCE_MIXERS, SEED_MIXER

    torch.manual_seed(0)
    model = LanguageModel(load_mixer_class(REFERENCE_MIXERS[SEED_MIXER]), 256, d_model=32, n_layers=2, n_heads=2)
    requests = [("Good night, sweet prince", ":\nAnd flights of angels"), ("x" * 150, " sing thee"), ("", "To rest")]
    lm = ByteLM(model, max_length=100, batch_size=3)
    got = lm.loglikelihood(_ll(requests))
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = _direct_cont(model.eval(), ctx.encode(), cont.encode(), 100)
        assert ll == pytest.approx(want_ll, abs=1e-3) and greedy == want_greedy
    text = "The rest is silence. " * 12  # 252 bytes: three windows
    (rolled,) = lm.loglikelihood_rolling(_rolling([text]))
    assert rolled == pytest.approx(lm.score_bytes([(b"", text.encode())])[0][0], abs=1e-3)
    assert rolled < 0
    (out,) = lm.generate_until(_gen([("Horatio", {"until": ["\n"], "max_gen_toks": 10})]))
    assert 0 < len(out) <= 10 and "\n" not in out  # chars <= bytes (invalid UTF-8 -> U+FFFD)


def _rolling(text):
    return [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(text)]


def test_rolling_loglikelihood_equals_sum_over_text(tiny):
    short = "Shall I compare thee to a summer's day?"
    long = (
        "Thou art more lovely and more temperate:\nRough winds do shake the darling buds of May,\n"
        "And summer's lease hath all too short a date;\n"
    ) * 2
    lm = ByteLM(tiny, max_length=48, batch_size=4)
    got_short, got_long = lm.loglikelihood_rolling(_rolling([short, long]))

    # short text: one forward over "\n" + text, every byte's log-prob summed
    ids = [NL] + list(short.encode())
    lp = _direct_logprobs(tiny, ids[:-1])
    assert got_short == pytest.approx(float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum()), abs=1e-4)

    # long text: equals the sum over lm-eval's own disjoint rolling windows
    toks = list(long.encode())
    want = 0.0
    n_scored = 0
    for inp, pred in map(make_disjoint_window, get_rolling_token_windows(toks, NL, 48, 1)):
        full = inp + pred
        lp = _direct_logprobs(tiny, full[:-1])[-len(pred) :]
        want += float(lp.gather(-1, torch.tensor(pred)[:, None]).sum())
        n_scored += len(pred)
    assert n_scored == len(toks)
    assert got_long == pytest.approx(want, abs=1e-3)

    # stride 1: every byte conditioned on exactly the 32 bytes before it (or all of them)
    mid = long[:100]
    lm1 = ByteLM(tiny, max_length=32, batch_size=128, rolling_stride=1)
    (got1,) = lm1.loglikelihood_rolling(_rolling([mid]))
    full = [NL] + list(mid.encode())
    want1 = sum(float(_direct_logprobs(tiny, full[max(0, i - 32) : i])[-1, full[i]]) for i in range(1, len(full)))
    assert got1 == pytest.approx(want1, abs=1e-3)
    (disjoint,) = ByteLM(tiny, max_length=32).loglikelihood_rolling(_rolling([mid]))
    assert got1 != pytest.approx(disjoint, abs=1e-3)  # more context per byte really changes the score


def _gen(args):
    return [Instance("generate_until", {}, a, i) for i, a in enumerate(args)]


def test_generate_until_stops_at_stop_string_and_budget():
    lm = ByteLM(NextLetter(), max_length=8, batch_size=2)
    out = lm.generate_until(
        _gen(
            [
                ("abc", {"until": ["gh"], "max_gen_toks": 50}),  # stop string excluded from output
                ("xy", {"until": "c", "max_gen_toks": 50}),  # wraps: z a b | c
                ("hello", {"until": ["\n\n"], "max_gen_toks": 5}),  # budget
                ("", {"until": ["zzz"], "max_gen_toks": 4}),  # empty context -> "\n" -> 'a'...
                ("q" * 40, {"until": ["w", "u"], "max_gen_toks": 50}),  # first stop to appear wins
                ("m", {"max_gen_toks": 0}),
            ]
        )
    )
    assert out == ["def", "zab", "pqrst", "abcd", "rst", ""]


def test_generate_until_matches_a_direct_greedy_loop(tiny):
    lm = ByteLM(tiny, max_length=24, batch_size=3)
    contexts = ["The quality of mercy is not strain'd", "It droppeth", "As the gentle rain from heaven"]
    out = lm.generate_until(_gen([(c, {"until": [], "max_gen_toks": 12}) for c in contexts]))
    for c, o in zip(contexts, out):
        ids = list(c.encode())
        gen = []
        for _ in range(12):
            gen.append(int(_direct_logprobs(tiny, (ids + gen)[-24:])[-1].argmax()))
        assert o == bytes(gen).decode("utf-8", errors="replace")


def _read(task: str) -> list[dict]:
    with open(TASKS_DIR / f"{task}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_shipped_task_data_is_reproducible_and_from_heldout_text(tmp_path):
    from training.data import load_corpus

    paths = generate_task_data(tmp_path)
    for name in list(paths) + ["manifest"]:
        suffix = ".json" if name == "manifest" else ".jsonl"
        shipped = (TASKS_DIR / f"{name}{suffix}").read_bytes()
        assert (tmp_path / f"{name}{suffix}").read_bytes() == shipped, f"{name} is stale: run python -m training.lm_tasks.generate"

    val = {n: t.decode() for n, t in load_corpus().val_documents}
    lastword = _read("shakespeare_lastword")
    cloze = _read("shakespeare_cloze")
    bpb = _read("shakespeare_bpb")
    assert len(lastword) >= 200 and len(cloze) >= 200 and len(bpb) >= 100
    for it in lastword:
        doc, word = val[it["doc"]], it["target"][1:]
        assert it["target"] == " " + word and word.isalpha()
        assert doc[it["offset"] - len(it["context"]) - 1 : it["offset"] + len(word)] == it["context"] + it["target"]
        assert word.lower() in it["context"].lower()
    for it in cloze:
        doc, choices = val[it["doc"]], it["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4 and 0 <= it["label"] < 4
        assert it["context"].endswith("\n") and doc[it["offset"] - len(it["context"]) : it["offset"]] == it["context"]
        true_lines = choices[it["label"]].split("\n")
        assert doc[it["offset"] :].startswith(true_lines[0])
    assert {it["label"] for it in cloze} == {0, 1, 2, 3}
    # distractors come from the true sentence's length bin: "pick the shortest/longest" is near chance
    for pick in (min, max):
        hits = sum(pick(range(4), key=lambda i: (len(it["choices"][i]), i)) == it["label"] for it in cloze)
        assert 0.15 < hits / len(cloze) < 0.35
    for it in bpb:
        assert val[it["doc"]][it["offset"] :].startswith(it["text"])


def test_probe_items_are_the_probes_rendered_as_bytes():
    from training.lm_tasks.generate import PROBES

    for task in PROBE_TASKS:
        _, params, alphabet = PROBES[task]
        items = _read(task)
        assert len(items) >= 100
        for it in items:
            assert set(it["context"] + it["target"]) <= set(alphabet[: params["vocab_size"]])
            assert len(it["context"]) == it["position"] + 1 <= params["seq_len"]
    for it in _read("probe_mqar"):  # the queried key was stored with the target value up front
        kv = it["context"][: 2 * 8]
        assert kv[kv.index(it["context"][-1]) + 1] == it["target"]
    for it in _read("probe_compression"):  # the target repeats the first copy
        first, _, copy = it["context"].partition("|")
        assert first[len(copy)] == it["target"]
    for it in _read("probe_selective_copy"):  # the next content byte after those copied so far
        first, _, copy = it["context"].partition("|")
        assert first.replace(".", "")[len(copy)] == it["target"]


def test_task_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["*"]
    assert (TASKS_DIR / "__init__.py").is_file()  # found as package training.lm_tasks
    shipped = [p for p in TASKS_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    assert {p.suffix for p in shipped} >= {".yaml", ".jsonl"}
    for p in shipped:
        assert any(fnmatch.fnmatch(p.name, pat) for pat in patterns), f"{p.name} would not be packaged"


def test_task_manager_finds_only_shipped_tasks():
    manager = task_manager()
    assert set(DEFAULT_TASKS) <= set(manager.all_subtasks)
    assert "lambada_openai" not in manager.all_tasks  # include_defaults=False
    with pytest.raises(ValueError, match="Unknown lm-eval task.*lambada_openai"):
        run_lm_eval(NextLetter(), tasks=("lambada_openai",), include_defaults=False)
    assert not needs_hub(["asiarch", "probe_mqar", "shakespeare_cloze"])
    assert needs_hub(["shakespeare_cloze", "lambada_openai"])


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted during an offline lm-eval run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with socket.socket() as probe, pytest.raises(AssertionError):  # the guard itself works
        probe.connect(("127.0.0.1", 9))


def test_simple_evaluate_runs_shipped_tasks_offline(tiny, no_network):
    limit = 6
    lm = ByteLM(tiny, max_length=128, batch_size=8)
    metrics = run_lm_eval(lm, limit=limit)
    assert set(metrics) == set(DEFAULT_TASKS) == set(SHAKESPEARE_TASKS + PROBE_TASKS)

    lw, cz, bpb = metrics["shakespeare_lastword"], metrics["shakespeare_cloze"], metrics["shakespeare_bpb"]
    assert 0.0 <= lw["acc"] <= 1.0 and 0.0 <= cz["acc"] <= 1.0 and 0.0 <= cz["acc_norm"] <= 1.0

    # the harness's numbers equal the bridge's own scores of the same documents
    items = _read("shakespeare_lastword")[:limit]
    res = lm.score_bytes([(it["context"].encode(), it["target"].encode()) for it in items])
    assert lw["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in res) / limit), rel=1e-4)
    assert lw["acc"] == pytest.approx(sum(g for _, g in res) / limit)

    items = _read("shakespeare_cloze")[:limit]
    correct = correct_norm = 0
    for it in items:
        scores = lm.score_bytes([(it["context"].encode(), c.encode()) for c in it["choices"]])
        lls = [ll for ll, _ in scores]
        norm = [ll / len(c) for ll, c in zip(lls, it["choices"])]
        correct += lls.index(max(lls)) == it["label"]
        correct_norm += norm.index(max(norm)) == it["label"]
    assert cz["acc"] == pytest.approx(correct / limit)
    assert cz["acc_norm"] == pytest.approx(correct_norm / limit)

    texts = [it["text"] for it in _read("shakespeare_bpb")[:limit]]
    lls = lm.loglikelihood_rolling(_rolling(texts))
    n_bytes = sum(len(t.encode()) for t in texts)
    assert bpb["bits_per_byte"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-4)
    assert bpb["byte_perplexity"] == pytest.approx(2 ** bpb["bits_per_byte"], rel=1e-4)
    assert bpb["bits_per_byte"] > 1.0  # an untrained model is far from English

    for task in PROBE_TASKS:
        items = _read(task)[:limit]
        res = lm.score_bytes([(it["context"].encode(), it["target"].encode()) for it in items])
        assert metrics[task]["acc"] == pytest.approx(sum(g for _, g in res) / limit)
        assert metrics[task]["sample_len"] == limit


def test_run_lm_eval_wraps_a_plain_module(no_network):
    metrics = run_lm_eval(NextLetter(), tasks=("shakespeare_lastword",), limit=3, max_length=64)
    # NextLetter puts ~all mass on one byte, so a real word costs about 20 nats per byte
    assert metrics["shakespeare_lastword"]["acc"] == 0.0
    assert metrics["shakespeare_lastword"]["perplexity"] > 1e6

