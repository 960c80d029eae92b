"""Synthetic probes that separate token mixers in seconds (Zoology and MAD style).

Each probe is a deterministic generator ``generate(n, generator, **params) -> (inputs, targets)``
of int64 tensors ``[n, T]``; ``targets`` holds the next token to predict where scored and -100
elsewhere. A probe is learned from scratch by a small model and scored by its token accuracy on
held-out examples (argmax over the vocabulary at scored positions).

Tasks
- ``mqar``: multi-query associative recall, Zoology's generator (Arora et al. 2023): key/value
  pairs up front, then queries of those keys at power-law distributed gaps among random tokens.
- ``noisy_recall``: MAD's noisy in-context recall (Poli et al. 2024): a stream of key/value pairs
  from a per-sequence mapping, with noise tokens between pairs; values are scored whenever their
  key was already seen.
- ``fuzzy_recall``: MAD's fuzzy recall: keys and values are multi-token motifs from a small vocab,
  so one token identifies nothing; every value token of an already-seen key is scored.
- ``selective_copy``: MAD's selective copying: a few content tokens scattered among blank tokens,
  then a copy marker and the content tokens again (teacher-forced): predicting the next content
  token means ignoring the blanks in between.
- ``compression``: a random sequence over a tiny vocabulary (many repeats, so single tokens are
  ambiguous), a separator, and the same sequence again (teacher-forced): the whole sequence must be
  held in the state with enough context to disambiguate repeats.
- ``memorization``: MAD's memorization: a fixed key->value table (the same for all sequences, set
  by the probe seed) to be stored in the weights; every key is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

IGNORE = -100


def _rand_distinct(n: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``[n, k]`` distinct integers from ``[low, high)`` per row."""
    if high - low < k:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    return torch.rand(n, high - low, generator=g).argsort(dim=1)[:, :k] + low


def mqar(
    n: int,
    g: torch.Generator,
    vocab_size: int = 512,
    seq_len: int = 256,
    num_kv_pairs: int = 16,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoology's ``multiquery_ar``: keys from the first half of the vocabulary (excluding 0),
    values from the second; ``num_kv_pairs`` pairs, then every key queried once at a gap drawn
    from a power law (``p(gap) ∝ gap^(a-1)``); the value after each query is scored."""
    if seq_len % 2 or num_kv_pairs * 4 > seq_len or vocab_size <= 2 * num_kv_pairs + 2:
        raise ValueError("mqar needs an even seq_len >= 4*num_kv_pairs and a larger vocabulary")
    context = 2 * num_kv_pairs
    key_vocab = vocab_size // 2
    keys = _rand_distinct(n, 1, key_vocab, num_kv_pairs, g)
    values = _rand_distinct(n, key_vocab, vocab_size, num_kv_pairs, g)
    kvs = torch.zeros(n, context, dtype=torch.long)
    kvs[:, 0::2] = keys
    kvs[:, 1::2] = values
    space = (seq_len - context) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(n, space), num_kv_pairs, replacement=False, generator=g)
    queries = torch.zeros(n, seq_len - context + 1, dtype=torch.long)
    queries.scatter_(1, gaps * 2, keys)
    examples = torch.cat([kvs, queries], dim=1)
    labels = torch.full((n, seq_len + 1), IGNORE, dtype=torch.long)
    labels.scatter_(1, gaps * 2 + context + 1, values)
    inputs, targets = examples[:, :-1].clone(), labels[:, 1:].clone()
    if random_non_queries:
        noise = torch.randint(vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, targets


def _unit_layout(n: int, n_units: int, is_long: torch.Tensor, long_len: int, short_len: int = 1) -> torch.Tensor:
    """Start position of each unit when units of two lengths are laid end to end."""
    lengths = torch.where(is_long, long_len, short_len)
    return torch.cumsum(lengths, dim=1) - lengths


def _seen_before(ids: torch.Tensor, mask: torch.Tensor, n_ids: int) -> torch.Tensor:
    """For unit ids ``[n, U]`` (valid where ``mask``), whether the same id occurred earlier."""
    onehot = torch.nn.functional.one_hot(ids.clamp(min=0), n_ids) * mask[..., None]
    before = torch.cumsum(onehot, dim=1) - onehot
    return before.gather(2, ids.clamp(min=0)[..., None]).squeeze(-1) > 0


def noisy_recall(
    n: int,
    g: torch.Generator,
    vocab_size: int = 64,
    seq_len: int = 128,
    num_keys: int = 8,
    noise_vocab: int = 16,
    frac_noise: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key/value pairs from a per-sequence mapping of ``num_keys`` keys, drawn with repetition,
    with noise tokens (a separate slice of the vocabulary) between pairs. The value following a
    key is scored when that key already appeared earlier in the sequence."""
    content = vocab_size - noise_vocab
    key_vocab = content // 2
    if num_keys > key_vocab or noise_vocab < 1:
        raise ValueError("noisy_recall: vocabulary too small for the keys")
    n_noise = int(round(frac_noise * seq_len))
    n_pairs = (seq_len - n_noise) // 2
    n_noise = seq_len - 2 * n_pairs
    n_units = n_pairs + n_noise
    keyset = _rand_distinct(n, 0, key_vocab, num_keys, g)
    valmap = torch.randint(key_vocab, content, (n, num_keys), generator=g)
    is_pair = torch.zeros(n, n_units, dtype=torch.bool)
    order = torch.rand(n, n_units, generator=g).argsort(dim=1)[:, :n_pairs]
    is_pair.scatter_(1, order, True)
    starts = _unit_layout(n, n_units, is_pair, 2)
    which = torch.randint(num_keys, (n, n_units), generator=g)
    key_tok = keyset.gather(1, which)
    val_tok = valmap.gather(1, which)
    noise_tok = torch.randint(content, vocab_size, (n, n_units), generator=g)
    seq = torch.zeros(n, seq_len + 1, dtype=torch.long)
    seq.scatter_(1, starts, torch.where(is_pair, key_tok, noise_tok))
    # value tokens go one after their key; noise units write their (unused) slot to position seq_len
    val_pos = torch.where(is_pair, starts + 1, torch.full_like(starts, seq_len))
    seq.scatter_(1, val_pos, torch.where(is_pair, val_tok, 0))
    seen = _seen_before(which, is_pair, num_keys) & is_pair
    targets = torch.full((n, seq_len + 1), IGNORE, dtype=torch.long)
    targets.scatter_(1, torch.where(seen, starts, torch.full_like(starts, seq_len)), torch.where(seen, val_tok, IGNORE))
    targets[:, seq_len] = IGNORE
    return seq[:, :seq_len], targets[:, :seq_len]


def fuzzy_recall(
    n: int,
    g: torch.Generator,
    vocab_size: int = 16,
    seq_len: int = 128,
    num_keys: int = 6,
    key_len: int = 2,
    value_len: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-token keys and values over a small vocabulary: a per-sequence mapping of
    ``num_keys`` distinct key motifs (``key_len`` tokens, first half of the vocabulary) to value
    motifs (``value_len`` tokens, second half); pairs drawn with repetition. Every value token of a
    pair whose key already appeared is scored (the first one from the last key token)."""
    half = vocab_size // 2
    if half**key_len < num_keys:
        raise ValueError("fuzzy_recall: not enough distinct key motifs")
    unit = key_len + value_len
    n_units = seq_len // unit
    # distinct key motifs: distinct integers in [0, half^key_len) written in base `half`
    codes = _rand_distinct(n, 0, half**key_len, num_keys, g)
    digits = torch.stack([(codes // half**i) % half for i in range(key_len)], dim=-1)  # [n, K, key_len]
    vals = torch.randint(half, vocab_size, (n, num_keys, value_len), generator=g)
    which = torch.randint(num_keys, (n, n_units), generator=g)
    k = digits.gather(1, which[..., None].expand(-1, -1, key_len))
    v = vals.gather(1, which[..., None].expand(-1, -1, value_len))
    units = torch.cat([k, v], dim=-1).reshape(n, n_units * unit)
    seq = torch.randint(vocab_size, (n, seq_len + 1), generator=g)  # filler for the tail
    seq[:, : n_units * unit] = units
    seen = _seen_before(which, torch.ones_like(which, dtype=torch.bool), num_keys)
    tgt_units = torch.full((n, n_units, unit), IGNORE, dtype=torch.long)
    # position key_len-1+j predicts value token j
    tgt_units[:, :, key_len - 1 : key_len - 1 + value_len] = torch.where(seen[..., None], v, IGNORE)
    targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    targets[:, : n_units * unit] = tgt_units.reshape(n, -1)
    return seq[:, :seq_len], targets


def selective_copy(
    n: int,
    g: torch.Generator,
    vocab_size: int = 32,
    seq_len: int = 128,
    num_tokens: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_tokens`` distinct content tokens (ids 2..vocab-1) scattered in order among blank
    tokens (id 0), then the copy marker (id 1) and the content tokens again, teacher-forced:
    the marker predicts the first content token and each copied token the next one."""
    if num_tokens > vocab_size - 2:
        raise ValueError("selective_copy: vocabulary too small")
    region = seq_len - num_tokens
    content = _rand_distinct(n, 2, vocab_size, num_tokens, g)
    pos = torch.rand(n, region, generator=g).argsort(dim=1)[:, :num_tokens].sort(dim=1).values
    seq = torch.zeros(n, seq_len + 1, dtype=torch.long)
    seq.scatter_(1, pos, content)
    seq[:, region] = 1
    seq[:, region + 1 : region + 1 + num_tokens] = content
    targets = torch.full((n, seq_len + 1), IGNORE, dtype=torch.long)
    targets[:, region : region + num_tokens] = content
    return seq[:, :seq_len], targets[:, :seq_len]


def compression(
    n: int,
    g: torch.Generator,
    vocab_size: int = 8,
    seq_len: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random sequence over ``vocab_size - 1`` symbols, a separator (the last id), and the same
    sequence again, teacher-forced: every token of the repeat is scored."""
    m = (seq_len - 1) // 2 + 1
    body = torch.randint(vocab_size - 1, (n, m), generator=g)
    sep = torch.full((n, 1), vocab_size - 1, dtype=torch.long)
    seq = torch.cat([body, sep, body], dim=1)[:, : seq_len + 1]
    targets = seq[:, 1:].clone()
    targets[:, :m] = IGNORE
    return seq[:, :seq_len], targets


def memorization(
    n: int,
    g: torch.Generator,
    vocab_size: int = 256,
    seq_len: int = 32,
    num_keys: int = 128,
    table_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed table (set by ``table_seed``) maps ``num_keys`` keys to values in the rest of the
    vocabulary; sequences are random keys each followed by its value; every value is scored."""
    if num_keys >= vocab_size:
        raise ValueError("memorization: num_keys must be below vocab_size")
    table = torch.randint(num_keys, vocab_size, (num_keys,), generator=torch.Generator().manual_seed(table_seed))
    keys = torch.randint(num_keys, (n, seq_len // 2), generator=g)
    seq = torch.stack([keys, table[keys]], dim=-1).reshape(n, -1)
    targets = torch.full_like(seq, IGNORE)
    targets[:, 0::2] = table[keys]
    return seq, targets


GENERATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "mqar": mqar,
    "noisy_recall": noisy_recall,
    "fuzzy_recall": fuzzy_recall,
    "selective_copy": selective_copy,
    "compression": compression,
    "memorization": memorization,
}


@dataclass(frozen=True)
class ProbeSpec:
    """One probe at one scale: the task, its generator parameters and its training budget.

    ``params`` is a tuple of ``(name, value)`` pairs (hashable) passed to the generator; it must
    contain ``vocab_size`` and ``seq_len``. The model trains on fresh batches for ``steps`` steps
    and is scored on ``eval_examples`` held-out sequences.
    """

    task: str
    params: tuple[tuple[str, object], ...]
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    eval_examples: int = 256
    name: str = ""

    @property
    def label(self) -> str:
        """Name under which the probe's accuracy is reported."""
        return self.name or self.task

    @property
    def kwargs(self) -> dict:
        """Generator keyword arguments."""
        return dict(self.params)

    @property
    def vocab_size(self) -> int:
        """Vocabulary of the probe model."""
        return int(self.kwargs["vocab_size"])

    @property
    def seq_len(self) -> int:
        """Sequence length of the probe."""
        return int(self.kwargs["seq_len"])


def probe(task: str, steps: int = 200, batch_size: int = 32, lr: float = 3e-3, eval_examples: int = 256,
          name: str = "", **params) -> ProbeSpec:
    """Convenience constructor of a :class:`ProbeSpec` (keyword generator parameters)."""
    if task not in GENERATORS:
        raise ValueError(f"unknown probe task {task!r}; known: {', '.join(GENERATORS)}")
    return ProbeSpec(task, tuple(sorted(params.items())), steps, batch_size, lr, eval_examples, name)


def generate(spec: ProbeSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples of ``spec``'s task from a seeded generator (same seed, same data)."""
    g = torch.Generator().manual_seed(int(seed))
    return GENERATORS[spec.task](n, g, **spec.kwargs)


def train_batches(spec: ProbeSpec, seed: int):
    """Endless fresh training batches of ``spec`` (deterministic in ``seed``)."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    fn = GENERATORS[spec.task]
    while True:
        yield fn(spec.batch_size, g, **spec.kwargs)


#: Held-out examples use seeds from this offset, disjoint from training seeds' streams.
EVAL_SEED_OFFSET = 1_000_003


#: Batch size of the scored (held-out) probe forward; the checker tests causality at it.
EVAL_BATCH_SIZE = 64


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Token accuracy of ``model`` (tokens -> logits) at the scored positions (targets != -100)."""
    correct = total = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch_size):
            x = inputs[i : i + batch_size].to(device)
            y = targets[i : i + batch_size].to(device)
            pred = model(x).argmax(dim=-1)
            mask = y != IGNORE
            correct += int((pred[mask] == y[mask]).sum())
            total += int(mask.sum())
    model.train(was_training)
    return correct / max(total, 1)


@dataclass
class ProbeOutcome:
    """Result of one probe run."""

    name: str
    accuracy: float | None
    seconds: float
    status: str = "ok"
    stop_reason: str | None = None
    loss_curve: list[list[float]] = field(default_factory=list)
