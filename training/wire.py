"""The narrow channel between the sandbox harness and its worker: length-prefixed frames of a small
JSON header and raw tensor bytes. Nothing is ever unpickled.

A frame is ``u32 header length | header (UTF-8 JSON object) | tensor bytes``. The header's
``"tensors"`` list describes the raw tensors that follow, in order: ``{"dtype": name, "shape":
[...]}`` with the dtype from :data:`DTYPES` (a small whitelist), at most :data:`MAX_RANK`
dimensions, and a byte size (numel x item size) the reader bounds before it reads anything.
Every other header key is plain JSON (``op``, ``args``, ``ok``, ``error``, ``values``).

Both sides use :func:`send` and :func:`recv`; the harness passes bounds (``max_header``,
``max_tensor_bytes``, ``max_total_bytes``) so that a hostile worker can neither make it allocate
without limit nor hand it anything but plain numbers, strings and dense tensors.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from typing import Any

import torch

#: The dtypes a frame may carry (name -> torch dtype).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_RANK = 6
MAX_HEADER = 256 * 1024
MAX_TENSOR_BYTES = 512 * 1024 * 1024
_LEN = struct.Struct("<I")


class WireError(RuntimeError):
    """A frame broke the protocol (too large, unknown dtype, bad shape, malformed header) or the
    peer closed the channel."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise WireError("the peer closed the channel")
        got += k
    return buf


def send(sock: socket.socket, header: dict[str, Any], tensors: list[torch.Tensor] | tuple = ()) -> None:
    """Send one frame: ``header`` (JSON-able; its ``"tensors"`` key is set here) and ``tensors``
    (dense, any device; sent as contiguous CPU bytes)."""
    metas = []
    blobs = []
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise WireError(f"not a tensor: {type(t).__name__}")
        t = t.detach()
        if t.dtype not in _NAMES:
            raise WireError(f"dtype {t.dtype} cannot be sent (allowed: {', '.join(DTYPES)})")
        t = torch.Tensor.contiguous(torch.Tensor.cpu(t))
        metas.append({"dtype": _NAMES[t.dtype], "shape": [int(s) for s in t.shape]})
        blobs.append(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    head = dict(header)
    head["tensors"] = metas
    data = json.dumps(head, allow_nan=True).encode()
    sock.sendall(_LEN.pack(len(data)) + data)
    for b in blobs:
        if b:
            sock.sendall(b)


def _tensor_meta(meta: Any, max_tensor_bytes: int) -> tuple[torch.dtype, tuple[int, ...], int]:
    if not isinstance(meta, dict):
        raise WireError("a tensor description is not an object")
    name = meta.get("dtype")
    shape = meta.get("shape")
    if name not in DTYPES:
        raise WireError(f"tensor dtype {name!r} is not allowed (allowed: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 40 for s in shape):
        raise WireError(f"bad tensor shape {shape!r} (at most {MAX_RANK} non-negative dimensions)")
    dtype = DTYPES[name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_tensor_bytes:
        raise WireError(f"a tensor of {nbytes} bytes exceeds the limit of {max_tensor_bytes}")
    return dtype, tuple(shape), nbytes


def recv(sock: socket.socket, max_header: int = MAX_HEADER, max_tensor_bytes: int = MAX_TENSOR_BYTES,
         max_total_bytes: int | None = None) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Receive one frame: ``(header, tensors)``. Raises :class:`WireError` on any breach (sizes
    are checked before the bytes are read)."""
    (n,) = _LEN.unpack(bytes(_recv_exact(sock, _LEN.size)))
    if n > max_header:
        raise WireError(f"a header of {n} bytes exceeds the limit of {max_header}")
    try:
        header = json.loads(bytes(_recv_exact(sock, n)))
    except ValueError as exc:
        raise WireError(f"malformed header: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    metas = header.get("tensors") or []
    if not isinstance(metas, list) or len(metas) > 64:
        raise WireError("bad tensor list")
    parsed = [_tensor_meta(m, max_tensor_bytes) for m in metas]
    total = sum(p[2] for p in parsed)
    if max_total_bytes is not None and total > max_total_bytes:
        raise WireError(f"a frame of {total} tensor bytes exceeds the limit of {max_total_bytes}")
    tensors = []
    for dtype, shape, nbytes in parsed:
        if nbytes == 0:
            tensors.append(torch.empty(shape, dtype=dtype))
            continue
        raw = _recv_exact(sock, nbytes)
        tensors.append(torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape))
    return header, tensors
