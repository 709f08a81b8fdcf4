"""Multi-head dot-product self-attention over positions, finite and infinite (Hron et al. 2020,
"Infinite attention: NNGP and NTK for deep attention networks"), in neural-tangents'
conventions (``stax.GlobalSelfAttention``) so that results compare with theirs.

Inputs z (C, T) (any positions S, flattened to T). Per head h, with every weight N(0, 1):

    keys       K_h = z W_K,h                      (T, d)
    queries    Q_h = K_h ("linear": tied)  or  z W_Q,h ("sqrt")
    attention  G_h = m(σ_QK · Q_h K_hᵀ / (C d))  ("linear")  or  m(σ_QK · Q_h K_hᵀ / (C √d))
    values     V_h = z W_V,h                      (T, d)
    output     f = (σ_w / √(H d C)) [G_1 V_1, …, G_H V_H] W_O + σ_b b     (T, width)

with m the mechanism: softmax over keys, identity, relu or abs. Under ``linear`` scaling the
logits converge to σ_QK Σ(x, x)[p, q] (tied weights; untied ones would make them vanish), so
the attention matrix of each input is deterministic in the limit and

    Σ'(x, x') = σ_w² G(x) Σ(x, x') G(x')ᵀ + σ_b²,   G(x) = m(σ_QK Σ(x, x))
    Θ'(x, x') = σ_w² G(x) Θ(x, x') G(x')ᵀ + 2 σ_w² G(x) Σ(x, x') G(x')ᵀ + σ_b²

(the values' and the output weights' gradients each add one copy of G Σ Gᵀ; the shared
query-key weights' share vanishes). Under ``sqrt`` scaling the logits stay random, the
kernel has no closed form and with few heads it does not concentrate (Sakai et al. 2025):
finite networks only. The weights carry no abc-parametrization multipliers: NTK only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..choices import ATTENTION_SCALINGS, ATTENTIONS, BIAS_STD, check_implemented
from ..errors import SpecError
from ..memory import LayerShape
from ..models.layers import PositionwiseDense, seeded_normal
from .core import Build, Layer
from .state import Kernel

__all__ = ["SelfAttention", "MECHANISMS"]

MECHANISMS = {"softmax": lambda g: torch.softmax(g, -1), "identity": lambda g: g,
              "relu": torch.relu, "abs": torch.abs}
check_implemented("attention mechanisms", ATTENTIONS, MECHANISMS)


def _projection(weight: Tensor, mult: float, bias: Tensor | None = None,
                bias_mult: float = 0.0) -> PositionwiseDense:
    """A positionwise dense layer (so the structured empirical NTK sees its signals), role
    ``attention`` (outside the coordinate check's roles), learning-rate factors 1."""
    return PositionwiseDense(weight, bias, mult, bias_mult, role="attention")


class _Attention(nn.Module):
    """The finite layer (module doc): z (N, C, T…) → (N, width, T…). Its four projections
    are positionwise dense layers: keys (and untied queries) and values C → H d without
    biases, the output H d → width with the bias."""

    def __init__(self, spec: SelfAttention, c_in: int, key_width: int, ctx: Build):
        super().__init__()
        h, d = spec.heads, key_width

        def draw(*shape: int) -> Tensor:                  # (h, c_in, d) → (h d, c_in) below
            return seeded_normal(*shape, generator=ctx.generator, dtype=ctx.dtype,
                                 device="cpu").to(ctx.device)

        def heads(w: Tensor) -> Tensor:
            return w.permute(0, 2, 1).reshape(h * d, c_in)

        self.key = _projection(heads(draw(h, c_in, d)), 1.0)
        self.query = _projection(heads(draw(h, c_in, d)), 1.0) if spec.scaling == "sqrt" \
            else None
        self.value = _projection(heads(draw(h, c_in, d)), 1.0)
        out = draw(h * d, spec.width)
        self.out = _projection(out.T.contiguous(), spec.weight_std / (h * d * c_in) ** 0.5,
                               draw(spec.width), spec.bias_std)
        self.spec, self.c_in, self.d = spec, c_in, d
        norm = c_in * (d if spec.scaling == "linear" else d ** 0.5)
        self.logit_scale = spec.query_key_std / norm

    def forward(self, z: Tensor) -> Tensor:
        n, c, *positions = z.shape
        z = z.reshape(n, c, -1)                                                # (N, C, T)
        h, d, t = self.spec.heads, self.d, z.shape[-1]

        def split(p: PositionwiseDense) -> Tensor:                             # (N H, T, d)
            # the projection's (N, T, H d) memory in head-major order: one copy, which the
            # batched products below (and tied queries) then share
            return p(z).transpose(1, 2).reshape(n, t, h, d).transpose(1, 2).reshape(n * h, t, d)

        keys = split(self.key)
        queries = keys if self.query is None else split(self.query)
        logits = torch.bmm(queries, keys.transpose(1, 2)).mul_(self.logit_scale)
        g = MECHANISMS[self.spec.mechanism](logits)                            # (N H, T, T)
        heads = torch.bmm(g, split(self.value)).view(n, h, t, d)
        joined = heads.transpose(1, 2).reshape(n, t, h * d)                    # (N, T, H d)
        return self.out(joined.transpose(1, 2)).reshape(n, self.spec.width, *positions)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in={self.c_in}, out={s.width}, heads={s.heads}, key_width={self.d}, "
                f"scaling={s.scaling}, mechanism={s.mechanism}")


@dataclass(frozen=True)
class SelfAttention(Layer):
    """Multi-head self-attention over the positions of (C, *S) inputs (module doc).
    ``key_width``: each head's key, query and value width (default width // heads)."""

    width: int
    heads: int = 4
    key_width: int | None = None
    scaling: str = "linear"
    mechanism: str = "softmax"
    query_key_std: float = 1.0
    weight_std: float = 1.0
    bias_std: float = BIAS_STD
    mixes_positions: bool = True

    def __post_init__(self):
        for name in ("width", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"SelfAttention's {name} must be an integer >= 1; got {v!r}")
        if self.scaling not in ATTENTION_SCALINGS:
            raise SpecError(f"scaling must be one of {', '.join(ATTENTION_SCALINGS)}; got "
                            f"{self.scaling!r}")
        if self.mechanism not in MECHANISMS:
            raise SpecError(f"mechanism must be one of {', '.join(MECHANISMS)}; got "
                            f"{self.mechanism!r}")
        if self.key_width is None and self.width < self.heads:
            raise SpecError(f"width {self.width} < heads {self.heads}: give each head a "
                            "key_width")

    def out_shape(self, shape):
        if len(shape) < 2:
            raise SpecError(f"SelfAttention reads inputs with positions (C, T); got {shape}")
        return (self.width, *shape[1:])

    @property
    def has_limit(self) -> bool:
        return self.scaling == "linear"

    def shapes(self, shape):
        """Keys (and untied queries) and values C → H d without biases, the output H d →
        width, each at every one of the T positions."""
        self.out_shape(shape)
        c, t = shape[0], math.prod(shape[1:])
        hd = self.heads * (self.key_width or self.width // self.heads)
        projections = 3 if self.scaling == "sqrt" else 2
        return [LayerShape(c, t, hd, t, 1, bias=False)] * projections + \
            [LayerShape(hd, t, self.width, t, 1)]

    def build(self, shape, ctx: Build):
        self.out_shape(shape)
        if ctx.parametrization != "ntk":
            raise SpecError("SelfAttention is built in the NTK parametrization only; got "
                            f"{ctx.parametrization!r}")
        return _Attention(self, shape[0], self.key_width or self.width // self.heads, ctx)

    def limit(self, k: Kernel) -> Kernel:
        if self.scaling != "linear":
            raise SpecError("attention with 1/√d ('sqrt') scaling has no closed-form limit: "
                            "its logits stay random (Hron et al. 2020) and with few heads the "
                            "kernel does not concentrate; measure finite networks, or use "
                            "scaling='linear'")
        t = math.prod(k.shape)

        def flat(e: Tensor, lead: int) -> Tensor:                 # (…, *S, *S) → (…, T, T)
            return e.reshape(*e.shape[:lead], t, t)

        g1, g2 = k.own(lambda c: MECHANISMS[self.mechanism](self.query_key_std * flat(c, 1)))
        w2, b2 = self.weight_std**2, self.bias_std**2

        def weigh(e: Tensor, a: Tensor, b: Tensor, pattern: str) -> Tensor:
            return torch.einsum(pattern, a, e, b).mul_(w2)

        cross = "iap,ijpq,jbq->ijab"
        gsg = weigh(flat(k.nngp, 2), g1, g2, cross)
        nngp = gsg + b2
        ntk = weigh(flat(k.ntk, 2), g1, g2, cross) + 2 * gsg + b2
        cov1, cov2 = k.own(lambda c, g: weigh(flat(c, 1), g, g, "iap,ipq,ibq->iab") + b2,
                           (g1, g2))
        shape = k.shape
        return Kernel(nngp=nngp.reshape(k.nngp.shape), ntk=ntk.reshape(k.ntk.shape),
                      cov1=cov1.reshape(k.cov1.shape), cov2=cov2.reshape(k.cov2.shape),
                      shape=shape, diagonal=False, channels=self.width)
