"""Render a :class:`~agents.builtin.genome.Genome` to a standalone, readable mixer file.

The output obeys the mixer contract of docs/ARCHITECTURE.md (``class Mixer(nn.Module)`` with
``__init__(self, d_model, n_heads, **kwargs)`` and ``forward(x)``), imports only what the sandbox
allows (torch, torch.nn, torch.nn.functional, math and ``training.ops``), and is written to be read
by a person or an LLM researcher who mutates it further: one line per design choice, with comments
that say which gene produced it.
"""

from __future__ import annotations

import textwrap

from agents.builtin.genome import DELTA_UPDATES, Genome


def head_layout(genome: Genome, d_model: int, n_heads: int) -> tuple[int, int, int]:
    """``(heads, key_dim, value_dim)`` of a genome at a backbone width, as the rendered code computes it."""
    heads = max(1, int(round(n_heads * genome.heads_factor)))
    head_dim = max(1, d_model // heads)
    return heads, max(1, int(head_dim * genome.expand_k)), max(1, int(head_dim * genome.expand_v))


def estimate_params(genome: Genome, d_model: int, n_heads: int) -> int:
    """Exact parameter count of the rendered mixer at ``d_model``/``n_heads`` (no code is run)."""
    h, dk, dv = head_layout(genome, d_model, n_heads)
    n = d_model * h * dk * 2 + d_model * h * dv  # q, k, v projections
    n += h * dv * d_model  # output projection
    k = genome.conv_size
    n += (h * dk * k) * (int(genome.conv_q) + int(genome.conv_k)) + (h * dv * k) * int(genome.conv_v)
    if genome.update in DELTA_UPDATES:
        n += d_model * h  # beta projection
    if genome.decay == "lowrank_logsigmoid":
        n += d_model * 16 + 16 * h * dk + h * dk
    elif genome.decay == "softplus":
        n += d_model * h + 2 * h  # a projection, A_log, dt_bias
    elif genome.decay == "sigmoid":
        n += d_model * h + h
    if genome.output_norm == "rms":
        n += dv
    if genome.output_gate != "none":
        n += d_model * h * dv
    return n


def _decay_init(genome: Genome) -> list[str]:
    if genome.decay == "fixed":
        return [
            "# decay (fixed, multi-scale): one constant gamma per head, 1 - 2^(-5 - h) as in RetNet",
            "self.register_buffer(",
            "    'gamma', 1.0 - torch.pow(2.0, -5.0 - torch.arange(self.n_heads, dtype=torch.float32)),",
            "    persistent=False,",
            ")",
        ]
    if genome.decay == "lowrank_logsigmoid":
        return [
            "# decay (data-dependent, per channel): low-rank logsigmoid gate / 16, as in GLA",
            "self.gk_down = nn.Linear(d_model, 16, bias=False)",
            "self.gk_up = nn.Linear(16, self.n_heads * self.key_dim, bias=True)",
        ]
    if genome.decay == "softplus":
        return [
            "# decay (data-dependent, per head): exp(-A * softplus(a(x) + dt_bias)), as in Mamba-2",
            "self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)",
            "self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1.0, 16.0)))",
            "dt = torch.exp(torch.rand(self.n_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))",
            "self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus",
        ]
    if genome.decay == "sigmoid":
        return [
            "# decay (data-dependent, per head): a sigmoid forget gate, biased towards remembering",
            "self.f_proj = nn.Linear(d_model, self.n_heads, bias=True)",
            "nn.init.constant_(self.f_proj.bias, 3.0)",
        ]
    return []


def _decay_forward(genome: Genome) -> list[str]:
    if genome.decay == "lowrank_logsigmoid":
        return [
            "g = F.logsigmoid(self.gk_up(self.gk_down(x))) / 16.0",
            "g = g.view(b, l, self.n_heads, self.key_dim).transpose(1, 2)  # [b, h, l, dk], <= 0",
        ]
    if genome.decay == "softplus":
        lines = [
            "g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)",
            "g = g.transpose(1, 2)  # [b, h, l], log decay <= 0",
        ]
    elif genome.decay == "sigmoid":
        lines = ["g = F.logsigmoid(self.f_proj(x)).transpose(1, 2)  # [b, h, l], log decay <= 0"]
    else:
        return []
    if genome.update == "gated":
        lines.append("g = g.unsqueeze(-1).expand(-1, -1, -1, self.key_dim)  # same decay on every channel")
    return lines


def _state_update(genome: Genome) -> list[str]:
    u = genome.update
    if u == "additive":
        norm = "True" if genome.normalize else "False"
        return [
            "# state update (additive): S_t = S_{t-1} + k_t v_t^T",
            f"o = ops.linear_attention(q, k, v, normalize={norm}, chunk_size=self.chunk_size)",
        ]
    if u == "decayed":
        return [
            "# state update (decayed): S_t = gamma_h S_{t-1} + k_t v_t^T",
            "o = ops.retention(q, k, v, self.gamma, chunk_size=self.chunk_size)",
        ]
    if u == "gated":
        return [
            "# state update (gated): S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T",
            "o = ops.gated_linear_attention(q, k, v, g, chunk_size=self.chunk_size)",
        ]
    if u == "delta":
        return [
            "# state update (delta rule): S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T",
            "o = ops.delta_rule(q, k, v, beta, chunk_size=self.chunk_size)",
        ]
    return [
        "# state update (gated delta rule): S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T",
        "o = ops.gated_delta_rule(q, k, v, beta, g, chunk_size=self.chunk_size)",
    ]


def render(genome: Genome, name: str = "Candidate", summary: str = "") -> str:
    """The mixer file of ``genome`` as Python source.

    Args:
        genome: a valid genome (it is validated here).
        name: the design's name, written into the module docstring.
        summary: an optional paragraph for the docstring (e.g. the motivation's first line).
    """
    g = genome.validate()
    hf, ek, ev = g.heads_factor, g.expand_k, g.expand_v
    doc = [f"{name}: {g.describe()}."]
    if summary:
        doc += ["", *textwrap.wrap(summary, 92)]
    doc += ["", "Rendered by asiarch's built-in researcher from the genome:"]
    doc += textwrap.wrap(", ".join(f"{k}={v!r}" for k, v in g.to_dict().items()), 92,
                         initial_indent="    ", subsequent_indent="    ")

    init = [
        "super().__init__()",
        f"self.n_heads = max(1, int(round(n_heads * {hf!r})))  # head layout: heads x{hf:g}",
        "head_dim = max(1, d_model // self.n_heads)",
        f"self.key_dim = max(1, int(head_dim * {ek!r}))  # state expansion x{ek:g}",
        f"self.value_dim = max(1, int(head_dim * {ev!r}))  # value expansion x{ev:g}",
        "self.chunk_size = chunk_size",
        "self.q_proj = nn.Linear(d_model, self.n_heads * self.key_dim, bias=False)",
        "self.k_proj = nn.Linear(d_model, self.n_heads * self.key_dim, bias=False)",
        "self.v_proj = nn.Linear(d_model, self.n_heads * self.value_dim, bias=False)",
    ]
    for which, dim, on in (("q", "key_dim", g.conv_q), ("k", "key_dim", g.conv_k), ("v", "value_dim", g.conv_v)):
        if on:
            act = "'silu'" if which == "v" else "None"
            init.append(
                f"self.{which}_conv = ops.ShortConvolution(self.n_heads * self.{dim}, "
                f"kernel_size=conv_size, activation={act})"
            )
    if g.update in DELTA_UPDATES:
        init.append("self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)  # writing strength beta")
    init += _decay_init(g)
    if g.output_norm == "rms":
        init.append("self.o_norm = ops.RMSNorm(self.value_dim)")
    if g.output_gate != "none":
        init.append(f"self.g_proj = nn.Linear(d_model, self.n_heads * self.value_dim, bias=False)  # {g.output_gate} output gate")
    init.append("self.o_proj = nn.Linear(self.n_heads * self.value_dim, d_model, bias=False)")

    fwd = ["b, l, _ = x.shape", "q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)"]
    for which, on in (("q", g.conv_q), ("k", g.conv_k), ("v", g.conv_v)):
        if on:
            fwd.append(f"{which} = self.{which}_conv({which})  # short causal convolution")
    if not g.conv_v:
        fwd.append("v = F.silu(v)")
    fwd += [
        "q = q.view(b, l, self.n_heads, self.key_dim).transpose(1, 2)",
        "k = k.view(b, l, self.n_heads, self.key_dim).transpose(1, 2)",
        "v = v.view(b, l, self.n_heads, self.value_dim).transpose(1, 2)",
    ]
    if g.feature_map != "identity":
        fwd += [
            f"phi = ops.feature_map({g.feature_map!r})  # feature map",
            "q, k = phi(q), phi(k)",
        ]
    if g.qk_norm == "l2":
        fwd.append("q, k = ops.l2_norm(q), ops.l2_norm(k)")
    if g.update in DELTA_UPDATES:
        scale = " * 2.0  # beta in (0, 2): allows negative eigenvalues" if g.beta_range == "double" else ""
        fwd.append(f"beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2){scale}")
    fwd += _decay_forward(g)
    fwd += _state_update(g)
    if g.output_norm == "rms":
        fwd.append("o = self.o_norm(o)")
    fwd.append("o = o.transpose(1, 2).reshape(b, l, self.n_heads * self.value_dim)")
    if g.output_gate == "swish":
        fwd.append("o = o * F.silu(self.g_proj(x))")
    elif g.output_gate == "sigmoid":
        fwd.append("o = o * torch.sigmoid(self.g_proj(x))")
    fwd.append("return self.o_proj(o)")

    body = "\n".join(
        [
            '"""' + "\n".join(doc) + '\n"""',
            "",
            "import math",
            "",
            "import torch",
            "import torch.nn as nn",
            "import torch.nn.functional as F",
            "",
            "from training import ops",
            "",
            "",
            "class Mixer(nn.Module):",
            f'    """{name}: {g.describe()}."""',
            "",
            "    def __init__(self, d_model: int, n_heads: int, conv_size: int = "
            f"{g.conv_size}, chunk_size: int | None = None, **kwargs):",
            textwrap.indent("\n".join(init), " " * 8),
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            textwrap.indent("\n".join(fwd), " " * 8),
            "",
        ]
    )
    return body
