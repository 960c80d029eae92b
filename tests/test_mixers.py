"""The six reference mixers: contract, causality, shapes, gradients, batch independence, imports;
and training.loader's errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from training.loader import MixerLoadError, load_mixer_class
from training.mixers import REFERENCE_MIXERS, SEED_MIXER, reference_mixer_class, reference_source

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = list(REFERENCE_MIXERS)
ALLOWED_IMPORTS = {
    "torch", "torch.nn", "torch.nn.functional", "math", "einops", "typing", "dataclasses", "functools",
    "training.ops",
}
D, H = 32, 4



def make(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_mixer_class(REFERENCE_MIXERS[name])(D, H, chunk_size=16, **kwargs).eval()


def test_registry():
    assert set(NAMES) == {"softmax_attention", "linear_attention", "retnet", "gla", "deltanet", "gated_deltanet"}
    assert SEED_MIXER == "deltanet"
    for name, path in REFERENCE_MIXERS.items():
        assert isinstance(path, Path) and path.is_file()
        assert reference_source(name) == path.read_text()
    with pytest.raises(KeyError, match="unknown reference mixer"):
        reference_source("mamba")


@pytest.mark.parametrize("name", NAMES)
def test_imports_only_allowed_modules(name):
    tree = ast.parse(reference_source(name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module]
        else:
            continue
        for mod in mods:
            assert mod in ALLOWED_IMPORTS or mod == "__future__", f"{name} imports {mod}"


@pytest.mark.parametrize("name", NAMES)
def test_has_short_convolution(name):
    convs = [m for m in make(name).modules() if type(m).__name__ == "ShortConvolution"]
    assert len(convs) == 3 and all(c.kernel_size == 4 for c in convs)


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_backward(name):
    mixer = make(name).train()
    x = torch.randn(2, 45, D, requires_grad=True)  # 45: not a multiple of the chunk size
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in mixer.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_very_short_sequences(name):
    mixer = make(name)
    for length in (1, 3):  # shorter than the convolution and the chunk
        y = mixer(torch.randn(2, length, D))
        assert y.shape == (2, length, D) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    mixer = make(name)
    torch.manual_seed(1)
    x = torch.randn(2, 40, D)
    with torch.no_grad():
        y = mixer(x)
        for t in (0, 7, 16, 33, 39):
            x2 = x.clone()
            x2[:, t:] = torch.randn_like(x2[:, t:]) * 3
            y2 = mixer(x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-5, rtol=0)
            assert not torch.allclose(y2[:, t], y[:, t], atol=1e-4), f"{name}: position {t} ignores its input"


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    mixer = make(name)
    x = torch.randn(3, 30, D)
    with torch.no_grad():
        full = mixer(x)
        for i in range(3):
            torch.testing.assert_close(mixer(x[i : i + 1]), full[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_chunk_size_only_changes_speed(name):
    torch.manual_seed(0)
    cls = reference_mixer_class(name)
    a = cls(D, H, chunk_size=16)
    b = cls(D, H, chunk_size=64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 50, D)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_parameter_counts_comparable():
    counts = {n: sum(p.numel() for p in reference_mixer_class(n)(128, 4).parameters()) for n in NAMES}
    for n, c in counts.items():
        assert 4 * 128**2 <= c <= 1.1 * 4 * 128**2, (n, c)
    assert max(counts.values()) / min(counts.values()) < 1.1, counts


def test_unknown_kwargs_are_ignored_and_options_work():
    for name in NAMES:
        reference_mixer_class(name)(D, H, some_future_option=1)
    la = reference_mixer_class("linear_attention")(D, H, feature_map="relu")
    assert la(torch.randn(1, 5, D)).shape == (1, 5, D)
    dn = reference_mixer_class("deltanet")(D, H, expand_v=2)
    assert dn(torch.randn(1, 5, D)).shape == (1, 5, D)
    with pytest.raises(ValueError, match="divisible"):
        reference_mixer_class("deltanet")(30, 4)


def test_gated_deltanet_decay_in_range():
    m = reference_mixer_class("gated_deltanet")(D, H)
    x = torch.randn(2, 10, D)
    log_alpha = -m.A_log.exp() * torch.nn.functional.softplus(m.a_proj(x) + m.dt_bias)
    assert (log_alpha <= 0).all() and torch.isfinite(log_alpha).all()


# ------------------------------------------------------------------------------------------------
# loader
# ------------------------------------------------------------------------------------------------

GOOD = """
import torch
import torch.nn as nn

class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
"""


def test_loader_accepts_path_and_source(tmp_path):
    p = tmp_path / "my_mixer.py"
    p.write_text(GOOD)
    cls = load_mixer_class(p)
    assert cls.__module__ == "my_mixer" and cls(8, 2)(torch.randn(1, 3, 8)).shape == (1, 3, 8)
    assert load_mixer_class(str(p)).__name__ == "Mixer"
    assert load_mixer_class(GOOD).__module__ == "candidate_mixer"
    for name in NAMES:  # every reference mixer loads by path in a fresh namespace
        assert issubclass(load_mixer_class(REFERENCE_MIXERS[name]), torch.nn.Module)


def test_loader_never_shadows_real_modules(tmp_path):
    import sys

    import torch as real_torch

    for stem in ("torch", "json", "9lives"):
        p = tmp_path / f"{stem}.py"
        p.write_text(GOOD)
        cls = load_mixer_class(p)
        assert cls.__module__ == f"mixer_{stem}"
    assert sys.modules["torch"] is real_torch
    import json

    assert hasattr(json, "dumps")


def test_loader_supports_dataclasses():
    src = GOOD + "\nfrom dataclasses import dataclass\n@dataclass\nclass Cfg:\n    width: 'int' = 3\n"
    load_mixer_class(src)


@pytest.mark.parametrize(
    "source, pattern",
    [
        ("import torch\nclass Mixer(torch.nn.Module):\n    def __init__(self, d_model, n_heads, **kw)\n        pass\n",
         r"syntax error at line 3"),
        ("import torch\nclass Other(torch.nn.Module):\n    pass\n", r"no class named Mixer \(it defines Other\)"),
        ("class Mixer:\n    def __init__(self, d_model, n_heads, **kw): pass\n    def forward(self, x): return x\n",
         r"not a subclass of torch.nn.Module"),
        ("Mixer = 3\n", r"not a class"),
        (GOOD.replace("d_model, n_heads, **kwargs", "d_model"), r"cannot be called as Mixer\(d_model, n_heads\)"),
        (GOOD.replace("d_model, n_heads, **kwargs", "d_model, n_heads"), r"does not accept \*\*kwargs"),
        (GOOD.replace("def forward(self, x)", "def forward(self, x, y)"), r"cannot be called as forward\(x\)"),
        (GOOD.replace("def forward(self, x)", "def other(self, x)"), r"does not define forward"),
        ("import torch\nraise RuntimeError('boom')\n", r"raised RuntimeError at line 2: boom"),
        ("import not_a_module_xyz\n", r"ModuleNotFoundError at line 1"),
    ],
    ids=["syntax", "no-mixer", "not-module", "not-class", "init-sig", "no-kwargs", "forward-sig", "no-forward",
         "raises", "bad-import"],
)
def test_loader_errors(source, pattern):
    with pytest.raises(MixerLoadError, match=pattern) as info:
        load_mixer_class(source)
    assert "\n" not in str(info.value)


def test_loader_missing_file(tmp_path):
    with pytest.raises(MixerLoadError, match="does not exist"):
        load_mixer_class(tmp_path / "absent.py")
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe\x00x = 1")
    with pytest.raises(MixerLoadError, match="not UTF-8"):
        load_mixer_class(tmp_path / "bin.py")

