"""Operator traces for the cost check: which aten ops a forward+backward runs, and their FLOPs.

:class:`OpTrace` is a ``TorchDispatchMode`` that records the name of every aten op dispatched
while it is active and adds up the FLOPs of the ops that carry arithmetic cost: matrix products
(through torch's own ``torch.utils.flop_counter`` formulas) and the fused attention kernels
(``scaled_dot_product_*``, counted here from the query and key shapes, 4·B·H·L·S·D forward and
twice that backward, since torch's counter skips the CPU kernels). The checker compares the op
*sets* at a scored length and at a long length: a different set means the design runs a
different code path (e.g. softmax attention below some length, a linear recurrence above), and
each path must then be sub-quadratic on its own. FLOPs are exact counts, immune to timer noise.
In-place, view and copy ops are left out of the path signature (they come and go with padding
and autograd's accumulation, not with the algorithm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

try:  # torch's FLOP formulas (matmuls, convolutions, its own attention kernels)
    from torch.utils.flop_counter import flop_registry as _FLOPS
except Exception:  # noqa: BLE001 - an older torch: attention and matmuls are counted below
    _FLOPS = {}

#: ops that never define a code path (views, copies, in-place bookkeeping)
_NEUTRAL = {"alias", "view", "_unsafe_view", "detach", "clone", "copy_", "empty_like", "zeros_like",
            "ones_like", "expand", "as_strided", "t", "transpose", "permute", "reshape", "squeeze",
            "unsqueeze", "slice", "select", "lift_fresh", "_to_copy", "empty", "new_empty",
            "new_zeros", "new_ones", "fill_", "zero_", "add_", "_local_scalar_dense", "split",
            "split_with_sizes", "unbind", "contiguous", "new_empty_strided", "empty_strided"}


#: ops whose output is a view of (or writes into) an existing tensor: no new memory is written
_VIEWS = {"alias", "view", "_unsafe_view", "detach", "expand", "as_strided", "t", "transpose", "permute",
          "squeeze", "unsqueeze", "slice", "select", "lift_fresh", "split", "split_with_sizes", "unbind",
          "_local_scalar_dense"}

_MATMULS = {"mm", "bmm", "addmm", "baddbmm"}
#: ops torch's counter knows but that are linear in L here (their formula is slow to evaluate)
_CHEAP: set[str] = set()


def _matmul_flops(args: tuple, out: Any) -> int:
    """2·M·K·N (times the batch) from the first matrix operand and the output."""
    mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
    if not mats or not isinstance(out, torch.Tensor):
        return 0
    a = mats[0] if len(mats) == 2 or mats[0].dim() == out.dim() and len(mats) < 3 else mats[1]
    k = int(a.shape[-1])
    return 2 * int(out.numel()) * k


def _out_bytes(out: Any) -> int:
    """Bytes of the tensors an op returns (a tuple/list of outputs summed)."""
    if isinstance(out, torch.Tensor):
        return int(out.numel()) * int(out.element_size())
    if isinstance(out, (tuple, list)):
        return sum(_out_bytes(o) for o in out)
    return 0


def _shape(a: Any) -> Any:
    return tuple(a.shape) if isinstance(a, torch.Tensor) else a


def _attention_flops(name: str, args: tuple) -> int:
    ts = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 3]
    if len(ts) < 2:
        return 0
    q, k = ts[0], ts[1]
    if "backward" in name:  # grad_out comes first in the backward kernels
        q, k = ts[1], ts[2] if len(ts) > 2 else ts[1]
    *batch, L, D = q.shape
    S = k.shape[-2]
    n = 1
    for b in batch:
        n *= int(b)
    f = 4 * n * int(L) * int(S) * int(D)
    return 2 * f if "backward" in name else f


class OpTrace(TorchDispatchMode):
    """Records aten op names and FLOPs while active (``with OpTrace() as t: ...``)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No Dynamo wrapper around ``__torch_dispatch__`` (torch's documented opt-out): nothing
        here is compiled, and the wrapper's first call imports ``torch._dynamo``, seconds of work
        that made up most of the checker's trace time."""
        return False

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.flops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        name = str(packet).removeprefix("aten.")
        self.ops[name] = self.ops.get(name, 0) + 1
        if name not in _VIEWS and not name.endswith("_"):
            self.bytes += _out_bytes(out)
        try:
            if "scaled_dot_product" in name or "attention" in name:
                self.flops += _attention_flops(name, args)
            elif name in _MATMULS:
                self.flops += _matmul_flops(args, out)
            elif packet in _FLOPS and name not in _CHEAP:
                self.flops += int(_FLOPS[packet](*args, **kwargs, out_val=out))
        except Exception:  # noqa: BLE001 - an op whose formula does not apply counts 0
            pass
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able: the path signature (sorted op names that define the algorithm), op count, FLOPs,
        and the bytes written by ops that allocate their output (memory traffic)."""
        path = sorted(n for n in self.ops if n not in _NEUTRAL and not n.endswith("_"))
        return {"path": path, "n_ops": int(sum(self.ops.values())), "flops": int(self.flops),
                "bytes": int(self.bytes)}
