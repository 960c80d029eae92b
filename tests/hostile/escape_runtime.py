"""Escape attempts past the static wall (the tests run this with the static check turned off, to
show that the runtime walls hold by themselves): reach os, sys and the real builtins through torch's
module attributes, then try a shell command, reading /etc/passwd, file writes outside the run folder (absolute and
relative), a raw socket connection and a subprocess. Every attempt swallows its error so that all
of them are tried."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        try:
            torch.os.system("touch ESCAPE_DIR/pwned_by_system")
        except Exception:
            pass
        try:
            real_open = torch.sys.modules["builtins"].open
            real_open("ESCAPE_DIR/pwned_by_builtins_open", "w").write("x")
        except Exception:
            pass
        try:
            torch.sys.modules["builtins"].open("../pwned_relative", "w").write("x")
        except Exception:
            pass
        try:
            fd = torch.os.open("ESCAPE_DIR/pwned_by_os_open", torch.os.O_WRONLY | torch.os.O_CREAT)
            torch.os.write(fd, b"x")
        except Exception:
            pass
        try:
            raw = torch.sys.modules["_socket"]
            s = raw.socket(raw.AF_INET, raw.SOCK_STREAM)
            s.connect(("127.0.0.1", 45678))
            s.send(b"leak")
        except Exception:
            pass
        try:
            sock_mod = torch.sys.modules["socket"]
            sock_mod.create_connection(("127.0.0.1", 45678), timeout=2).send(b"leak")
        except Exception:
            pass
        try:
            print(torch.sys.modules["builtins"].open("/etc/passwd").read()[:100])
        except Exception:
            pass
        try:
            torch.sys.modules["subprocess"].run(["touch", "ESCAPE_DIR/pwned_by_subprocess"])
        except Exception:
            pass
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
