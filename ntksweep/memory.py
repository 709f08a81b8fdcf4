"""Working memory, planned from shapes alone (no torch, nothing built): a network's layers as
the structured empirical NTK sees them, the bytes of one NTK tile, the tile side a budget
allows — the same rules ``kernels`` plans its tiles by — and a trial's peak from its spec.

A layer is (C_in, P_in, C_out, P_out, k²): input channels and positions, output channels and
positions, window size (a dense layer: P = 1, k² = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .architectures import input_kind
from .choices import MYRTLE_STAGES

AUTO_JACOBIAN_BYTES = 2 << 30   # empirical_ntk's Jacobian tiles under 'auto' without a budget

__all__ = ["LayerShape", "Footprint", "network_shapes", "structured_tile_bytes",
           "generic_tile_bytes", "candidate_blocks", "largest_block", "TrialMemory",
           "trial_memory", "SIGNAL_BATCH", "CONV_LIMIT_TILE_BYTES", "CPU_CHUNK_BYTES",
           "MIN_CHUNK_CHANNELS"]

# A structured tile's forward and backward passes go in batches of at least this many
# examples where the budget is tight (smaller batches make the convolutions inefficient).
SIGNAL_BATCH = 64
# The conv limit's image-pair tiles on a CPU: a working set that stays in the cache.
CONV_LIMIT_TILE_BYTES = 16 << 20
# Resident memory above the live bytes of a phase (glibc keeps freed blocks): 1.0–1.3 × in
# benchmarks/bench_memory.py's runs
ALLOCATOR_SLACK = 1.2
# On the CPU a conv layer's per-example gradients are formed in chunks of about this many
# bytes, and of at least this many input channels (thinner chunks make the k-output products
# inefficient); the Gram product reads each chunk back from the cache.
CPU_CHUNK_BYTES = 32 << 20
MIN_CHUNK_CHANNELS = 8


@dataclass(frozen=True)
class LayerShape:
    """One ``Dense`` or ``Conv`` layer's sizes for one example (module doc); ``bias``: whether
    it has one (attention's projections do not)."""

    c_in: int
    p_in: int
    c_out: int
    p_out: int
    kk: int
    bias: bool = True

    @property
    def params(self) -> int:
        return self.c_out * (self.c_in * self.kk + self.bias)

    def channel_bytes(self, k: int, itemsize: int) -> int:
        """One example's share of a one-input-channel chunk of its per-example gradients: its
        k·C_out·k² weight gradients and its k²·P_in patch entries."""
        return itemsize * self.kk * (k * self.c_out + self.p_in)


@dataclass(frozen=True)
class Footprint:
    """Bytes per example while its tile is computed. ``held``: every layer's input and its
    k pre-activation gradients, kept to the end; ``transient``: the autograd graph's
    pre-activations and activations and the unstacked gradients, while the example's batch
    goes forward and back; ``chunk``: its share of the smallest gradient chunk (one input
    channel of the widest layer)."""

    held: int
    transient: int
    chunk: int

    @classmethod
    def of(cls, shapes: list[LayerShape], k: int, itemsize: int) -> Footprint:
        return cls(held=itemsize * sum(s.c_in * s.p_in + k * s.c_out * s.p_out for s in shapes),
                   transient=itemsize * sum((2 + k) * s.c_out * s.p_out for s in shapes),
                   chunk=max(s.channel_bytes(k, itemsize) for s in shapes))

    def tile_bytes(self, points: int) -> int:
        """Working memory of ``points`` examples' signals and chunks, the forward and
        backward passes done ``SIGNAL_BATCH`` at a time."""
        return points * (self.held + self.chunk) + min(points, SIGNAL_BATCH) * self.transient


def network_input_shape(architecture: str, shape, patch: int = 2) -> tuple[int, ...]:
    """One input as the network reads it, channels first, from a ``data.DataShape``: (d,)
    for vectors (an mlp), (d, T) for sequences (a transformer) — an image's p×p ``patch``es
    are its tokens, d = C·p² —, (C, H, W) for images (the conv nets); a user's network reads
    the data's own shape."""
    kind = input_kind(architecture, shape)
    if kind == "vectors":
        return (shape.in_dim,)
    if kind == "images":
        return shape.image_shape
    if kind == "patches":
        c, h, w = shape.image_shape
        return (c * patch * patch, (h // patch) * (w // patch))
    tokens, features = shape.sequence_shape
    return (features, tokens)


def network_shapes(architecture: str, in_shape: tuple[int, ...], width: int, depth: int,
                   out_dim: int, *, kernel_size: int = 3, padding: str = "same",
                   readout: str = "gap", heads: int = 1, attention_scaling: str = "linear"
                   ) -> list[LayerShape]:
    """The layers of a registered architecture on inputs ``in_shape`` ((d,) for an mlp,
    (d, T) for a transformer, (C, H, W) for the others), in order, as they are built. The
    layers report these themselves (``ntksweep.layers``' ``shapes``); this torch-free copy
    lets a sweep be planned without importing torch, and tests/test_preflight.py holds it
    to the layers' own report for every preset."""
    if architecture == "mlp":
        dims = [in_shape[0], *[width] * (depth - 1), out_dim]
        return [LayerShape(a, 1, b, 1, 1) for a, b in zip(dims[:-1], dims[1:])]
    if architecture == "myrtle":
        return _myrtle_shapes(in_shape, width, depth, out_dim)
    if architecture == "transformer":
        return _transformer_shapes(in_shape, width, depth, out_dim, heads, attention_scaling)
    c, h, w = in_shape
    kk, shrink = kernel_size ** 2, (kernel_size - 1 if padding == "valid" else 0)
    shapes = []
    for i in range(depth - 1):                   # the cnn's convolutions, the resnet's stem
        h2, w2 = (h - shrink, w - shrink) if architecture == "cnn" else (h, w)
        shapes.append(LayerShape(c if i == 0 else width, h * w, width, h2 * w2, kk))
        h, w = h2, w2
    flat = architecture == "cnn" and readout == "flatten"
    return [*shapes, LayerShape(width * (h * w if flat else 1), 1, out_dim, 1, 1)]


def _myrtle_shapes(in_shape: tuple[int, ...], width: int, depth: int, out_dim: int
                   ) -> list[LayerShape]:
    """Myrtle's 3×3 'same' convolutions at full, half and quarter resolution (2×2 pools
    between the stages: ``choices.MYRTLE_STAGES``), then its readout on the pooled channels."""
    c, h, w = in_shape
    shapes = []
    for stage, convs in enumerate(MYRTLE_STAGES[depth]):
        if stage:
            h, w = h // 2, w // 2
        for _ in range(convs):
            shapes.append(LayerShape(c, h * w, width, h * w, 9))
            c = width
    return [*shapes, LayerShape(width, 1, out_dim, 1, 1)]


def _transformer_shapes(in_shape: tuple[int, ...], width: int, depth: int, out_dim: int,
                        heads: int, scaling: str) -> list[LayerShape]:
    """A transformer's weights as per-token dense maps over its T tokens: the embedding;
    per block the attention's keys (queries tied under linear scaling) and values (H d
    channels, no biases) and its output, and the MLP's two layers; the readout on the mean
    token."""
    features, tokens = in_shape
    hd = heads * (width // heads)
    project = LayerShape(width, tokens, hd, tokens, 1, bias=False)
    dense = LayerShape(width, tokens, width, tokens, 1)
    block = [project] * (3 if scaling == "sqrt" else 2) + \
        [LayerShape(hd, tokens, width, tokens, 1), dense, dense]
    return [LayerShape(features, tokens, width, tokens, 1), *block * (depth - 2),
            LayerShape(width, 1, out_dim, 1, 1)]


def structured_tile_bytes(shapes: list[LayerShape], k: int, itemsize: int, rows: int,
                          cols: int, *, conv: bool) -> int:
    """A structured NTK tile's working memory (bytes) for ``rows`` + ``cols`` examples
    (cols 0: a diagonal tile of one input set), without the model and the assembled output.
    MLPs hold every example's layer inputs and k + 2 signals per unit; conv nets their
    ``Footprint``; both add the tile's per-pair blocks."""
    if conv:
        return Footprint.of(shapes, k, itemsize).tile_bytes(rows + cols) \
            + itemsize * rows * max(cols, rows) * 2 * k * k
    per_point = sum(s.c_in + (k + 2) * s.c_out for s in shapes)
    return itemsize * ((rows + cols) * per_point + rows * max(cols, rows) * (2 * k * k + 2))


def generic_tile_bytes(params: int, k: int, itemsize: int, rows: int, cols: int) -> int:
    """A Jacobian-contraction (or NTK-vector-product) tile: per example k per-parameter
    gradients (and autograd's copies), and the per-pair blocks."""
    return itemsize * ((rows + cols) * 3 * k * params + rows * max(cols, rows) * 2 * k * k)


def candidate_blocks(n: int) -> list[int]:
    """Tile sides to try for n points: powers of two below n, n itself, and ⌈n/m⌉ so that
    the tiles come out even."""
    sizes = {n}
    s = 1
    while s < n:
        sizes.add(s)
        s *= 2
    for s in list(sizes):
        if s < n:
            sizes.add(math.ceil(n / math.ceil(n / s)))
    return sorted(sizes)


def largest_block(n: int, tile_bytes: Callable[[int], int], budget: int | None) -> int | None:
    """The largest tile side whose s × s tile fits ``budget`` (n without one); None if even
    a 1 × 1 tile does not fit."""
    if budget is None:
        return n
    fits = [s for s in candidate_blocks(n) if tile_bytes(s) <= budget]
    return max(fits) if fits else None


@dataclass(frozen=True)
class TrialMemory:
    """A trial's estimated peak (bytes) and its parts: what it holds throughout, and the
    largest of its passing phases (computing the limit, a training step, an NTK tile, an
    eigendecomposition)."""

    held: int
    phases: dict[str, int]
    smallest_tile: int = 0       # one NTK entry's tile: what a memory_budget must hold

    @property
    def peak(self) -> int:
        """Held bytes plus the largest phase's, with ``ALLOCATOR_SLACK``: freed blocks of a
        phase's temporaries stay resident for a while (glibc's heap), so the process's peak
        exceeds the bytes live at any moment."""
        return self.held + int(ALLOCATOR_SLACK * max(self.phases.values(), default=0))


def trial_memory(spec, in_shape: tuple[int, ...], out_dim: int,
                 shapes: list[LayerShape] | None = None) -> TrialMemory:
    """The working memory of the trial ``spec`` (a ``TrialSpec``) on inputs shaped
    ``in_shape`` (one point) with ``out_dim`` outputs — its network's layers ``shapes``
    (default: the registered architecture's) —, beyond its process's baseline: what
    it holds throughout (data, network, the limits and Θ_0 as float64) and its phases
    (``TrialMemory``). Products over k outputs leave a temporary or two of their result's
    size beside it (einsum, broadcasting), counted as such."""
    size = 4 if spec.dtype == "float32" else 8
    m, n, t, k = spec.n_eval, spec.n_train, spec.n_test, out_dim
    shapes = shapes if shapes is not None else network_shapes(
        spec.architecture, in_shape, spec.width, spec.depth, k, kernel_size=spec.kernel_size,
        padding=spec.padding, readout=spec.readout, heads=spec.heads,
        attention_scaling=spec.attention_scaling)
    params = sum(s.params for s in shapes)
    pairs = k * k if k > 1 else 1                # the linearised net's (·, ·, k, k) kernels
    flat = 8 * (n * k) ** 2 if k > 1 else 0      # one (N k)² float64 matrix
    held = (8 * (m + n + t) * math.prod(in_shape)                      # the data
            + 8 * 2 * ((m + n) ** 2 + t * n + n * n)                   # Θ_∞, Σ; test; eig V
            + size * params * (5 if spec.optimizer == "adam" else 3)   # θ, ∇θ, a step's
            #                                     temporary (and Adam's two moments)
            + 8 * (m * m + (m + n) * n * pairs)                        # Θ_0's parts
            + 2 * flat)                                                # its eig V and Λ
    rows = spec.batch_rows(n)
    ntk, smallest = _ntk_phase(spec, shapes, params, k, size, m + n)
    phases = {"limit": _limit_phase(spec, in_shape, m + n),
              "train": size * rows * sum(s.c_out * s.p_out for s in shapes) * 4,
              "ntk": ntk + (3 * size + 2 * 8) * (m + n) ** 2 * pairs,   # + slices' copies
              "eig": 5 * flat,           # flat copy, its symmetric part, V, LAPACK's work
              "held_out": _ntk_phase(spec, shapes, params, k, size, n)[0]
              + (3 * size + 8) * n * n * pairs + 5 * flat if t else 0}
    return TrialMemory(held, phases, smallest)


def _ntk_phase(spec, shapes, params, k, size, points) -> tuple[int, int]:
    """An empirical NTK on ``points`` inputs: its largest tile as the kernels plan it (one
    diagonal tile without a ``memory_budget``: every example's signals and passes at once,
    gradient chunks of ``CPU_CHUNK_BYTES``; under a budget the tile fills it), and the
    bytes of a 1 × 1 tile."""
    conv = spec.architecture != "mlp"
    budget = spec.memory_budget
    generic = spec.ntk_method not in ("auto", "structured")
    if generic and spec.ntk_method == "auto" and budget is None:
        budget = AUTO_JACOBIAN_BYTES       # 'auto' tiles per-example Jacobians at this size

    def tile(rows: int, cols: int) -> int:
        if generic:
            return generic_tile_bytes(params, k, size, rows, cols)
        return structured_tile_bytes(shapes, k, size, rows, cols, conv=conv)

    smallest = tile(1, 1)
    if budget is not None and (largest_block(points, lambda s: tile(s, s), budget) or 1) \
            < points:
        return budget, smallest
    if conv and not generic:
        f = Footprint.of(shapes, k, size)
        per_channel = points * max(s.channel_bytes(k, size) for s in shapes)
        widest = max(s.c_in for s in shapes)
        chunk = per_channel * min(widest, max(MIN_CHUNK_CHANNELS, CPU_CHUNK_BYTES // per_channel))
        whole = points * (f.held + f.transient) + chunk
        return (whole if budget is None else min(whole, budget)), smallest
    return tile(points, 0), smallest


def _limit_phase(spec, in_shape: tuple[int, ...], points: int) -> int:
    """Computing Θ_∞ and Σ on [eval; train]: a conv limit's tiles of image pairs over P²
    pixel pairs (P per pair for a flatten readout), ~8 float64 buffers each, in tiles that
    stay in the cache on a CPU; and the symmetrised copies of the two results."""
    result = 8 * 4 * points * points
    if spec.architecture == "mlp":
        return result
    pixels = math.prod(in_shape[1:])
    per_pair = 8 * 8 * (pixels if spec.readout == "flatten" and spec.architecture == "cnn"
                        else pixels * pixels)
    return result + max(CONV_LIMIT_TILE_BYTES, per_pair)
