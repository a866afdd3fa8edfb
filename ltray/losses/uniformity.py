"""Hyperspherical uniformity of the classifier rows, cheap enough for 8,142 classes.

On the unit rows u_i = w_i / ||w_i||, with d2_ij = ||u_i - u_j||^2 = 2 - 2 u_i.u_j, averaged
over the C (C - 1) ordered pairs i != j:

    mhe_s0    mean -log ||u_i - u_j||        (log energy; Liu et al. 2018, s = 0)
    mhe_s1    mean 1 / ||u_i - u_j||         (Riesz s = 1)
    mhe_s2    mean 1 / ||u_i - u_j||^2       (Riesz s = 2)
    gaussian  log mean exp(-t ||u_i - u_j||^2)   (Wang & Isola 2020)

``uniformity_loss`` never builds a C x C mask or an off-diagonal copy. The Gram matrix is
symmetric, so it takes one block of rows at a time against those rows and every later one
([block_rows, C - r0], the upper triangle by blocks: each pair once), counts the block's
leading square once (it holds both orders of its pairs) and the rest twice, and fills the
square's diagonal with the Gram value whose distance makes the potential exactly 0 (g = 1/2,
d2 = 1 for the log energy; g = -inf, d2 = inf for the rest), so self-pairs drop out of the
sum with no subtraction. The gradient of this scalar of W is known in closed form,
dL/du_i = -4 dL/dS sum_{j != i} phi'(d2_ij) u_j, so the forward pass accumulates it block by
block (each block's phi' pulls its own rows and, transposed, the later ones) and the backward
pass only scales it: C^2 d / 2 multiply-adds for the Gram and C^2 d for the gradient, where
the whole Gram would take C^2 d and autograd through the blocks C^2 d more, keeping every
block alive. The elementwise work on a block (distance,
clamp, potential, its derivative) is one function that torch.compile fuses into a single
pass (``fused``, on by default on CUDA, where it otherwise costs as much as the matmuls).
The rows are padded with zero rows and columns to multiples of 8 (``_aligned``), so that
every operand of the matmuls has a leading dimension of whole 16-byte words, which cuBLAS's
fast tensor-core kernels need (iNaturalist's 8,142 classes are not such a multiple); with a
``block_rows`` that is a multiple of 8 (the default, 1,024), every block's slice starts on
one too.

Squared distances are clamped at ``D2_EPS`` (coincident rows); as with ``clamp``, a clamped
pair passes no gradient. Everything after the matmuls runs in fp32 (fp64 rows: fp64), and the
matmuls (``gram``, ``loss.uniformity.gram_dtype``) in

- ``fp32``: the reference; on a GPU its 1.5 C^2 d multiply-adds run without tensor cores
  (3 C^2 d = 407 GFLOP at C = 8,142, d = 2,048);
- ``bf16x3``: each fp32 operand split into two bf16 parts, x = hi + lo (hi = bf16(x),
  lo = bf16(x - hi)), and a.b = hi.hi + hi.lo + lo.hi, each product of bf16 numbers exact and
  summed in fp32 (``torch.mm(..., out_dtype=float32)`` on CUDA; on the CPU the same products in
  fp32 matmuls). Each product after the first, and each block's pull, is added into its sums
  by the matmul itself (``addmm``, beta 1), not by a pass of its own: on an H200 at 8,142
  classes those passes took 0.86 of the term's 3.9 ms of kernels (2026-11-28). The dropped
  lo.lo term and the rounding of lo are below 2^-16 of each product, so about 16 of fp32's
  24 bits: on 200 rows in 64 dimensions, the loss is within 1e-7 of
  fp64 and the gradient within 7e-6 with every pair 30 degrees apart; 5e-7 and 4e-4 with
  pairs 4.4 degrees apart, where bf16 is off by 4e-2 and 0.46 (fp32: 6e-7 and 6e-5;
  tests/method/test_uniformity.py). On an H200 the loss of those close pairs was 1.2e-5 off:
  tensor cores truncate as they add into the fp32 sums, a bias towards zero that does not
  average out. Three bf16 products on tensor cores for each of fp32's;
- ``bf16``: rows and Gram rounded to bf16, the cheapest and a coarse opt-in: it rounds the
  Gram to 8 significant bits, harmless while rows are apart (at least 30 degrees between every
  pair: loss within 1e-3 relative and gradient cosine >= 0.999 of fp32) but costs 0.3-0.5% of
  the gradient's norm even for well-spread rows, and loses the distance of near-duplicate rows
  (under ~10 degrees, 2 - 2 cos cancels), the very regime this regulariser acts on;
- ``auto`` (the default): ``bf16x3`` on CUDA from ``BF16X3_MIN_ROWS`` classes on, ``fp32``
  elsewhere: no tensor cores to gain on the CPU, and below a few thousand classes the three
  products' extra launches and passes cost what the tensor cores save (at 1,000 classes fp32
  took 2.1 ms of an H100, bf16x3 2.3 of an H200; at 8,142, on the H200, 13.5 and 9.4 ms).

fp64 rows stay fp64 whatever ``gram`` says.

``uniformity_loss_naive`` is the textbook version (full Gram, boolean mask) kept as the
reference for tests and the benchmark.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from ltray.compile_errors import is_compile_failure
from ltray.errors import LtrayError

UNIFORMITY_KINDS: tuple[str, ...] = ("mhe_s0", "mhe_s1", "mhe_s2", "gaussian")
GRAM_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16x3", "bf16")
D2_EPS = 1e-6  # smallest squared distance between two unit rows
BF16X3_MIN_ROWS = 2048  # auto: bf16x3 on CUDA from this many classes on
ALIGN = 8  # rows and columns of the matmuls padded to multiples of this: 16 bytes of bf16

# the Gram value put on a block's diagonal: its squared distance 2 - 2g (1 for the log energy,
# inf for the rest) is where the potential is exactly 0, so self-pairs drop out of the sum
_NEUTRAL_GRAM = {"mhe_s0": 0.5, "mhe_s1": -math.inf, "mhe_s2": -math.inf, "gaussian": -math.inf}
_fusion_failed = False  # set once if torch.compile is unusable on this host
_fp32_out_failed = False  # set once if this torch cannot sum bf16 products into fp32 on CUDA
_fp32_addmm_failed = False  # set once if it cannot add them into an fp32 matrix in the matmul


def _potential(d2: Tensor, kind: str, t: float) -> Tensor:
    """phi(d2) elementwise (a new tensor)."""
    if kind == "mhe_s0":
        return d2.log().mul_(-0.5)
    if kind == "mhe_s1":
        return d2.rsqrt()
    if kind == "mhe_s2":
        return d2.reciprocal()
    return d2.mul(-t).exp_()


def _potential_grad(phi: Tensor, d2: Tensor, kind: str, t: float) -> Tensor:
    """dphi/dd2 elementwise, from phi where that is cheaper (a new tensor)."""
    if kind == "mhe_s0":
        return d2.reciprocal().mul_(-0.5)
    if kind == "mhe_s1":
        return phi.pow(3).mul_(-0.5)
    if kind == "mhe_s2":
        return phi.square().neg_()
    return phi.mul(-t)


def _block_energy(
    gram: Tensor, square: int, kind: str, t: float, need_grad: bool, split: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """For one row block of the Gram matrix's upper triangle, [b, C - r0] with its leading
    [b, square] square on the diagonal: the fp64 sum of phi(2 - 2g) over the ordered pairs it
    stands for (the square's entries once, the rest twice), and (if asked) phi'(d2), 0 where
    the distance was clamped, as the pull's matmuls take it: ``(dphi,)`` in the Gram's dtype,
    or with ``split`` its two bf16 parts ``(hi, lo)`` (else ``()``).

    Purely elementwise, so torch.compile fuses it, the split included, into one pass over the
    block."""
    work_dtype = torch.float64 if gram.dtype == torch.float64 else torch.float32
    d2 = torch.rsub(gram.to(work_dtype), 2.0, alpha=2.0)
    apart = d2 > D2_EPS if need_grad else None
    d2 = d2.clamp_min_(D2_EPS)
    phi = _potential(d2, kind, t)
    # twice the whole, less the square once (a slice past it would be empty in the last block)
    columns = phi.sum(dim=0, dtype=torch.float64)
    total = columns.sum().mul(2.0) - columns[:square].sum()
    if apart is None:
        return total, ()
    dphi = torch.where(apart, _potential_grad(phi, d2, kind, t), 0.0)
    return total, _bf16_parts(dphi) if split else (dphi.to(gram.dtype),)


@functools.cache
def _compiled_block_energy() -> Callable[..., tuple[Tensor, tuple[Tensor, ...]]]:
    # blocks narrow down the triangle: one kernel with symbolic sizes serves every width
    return torch.compile(_block_energy, dynamic=True, fullgraph=True)


def _run_block_energy(
    gram: Tensor, square: int, kind: str, t: float, need_grad: bool, split: bool, fused: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``_block_energy``, compiled when ``fused``. If compiling fails, it runs eager for the
    rest of the process, with one warning; any other error propagates."""
    global _fusion_failed
    if fused and not _fusion_failed:
        try:
            return _compiled_block_energy()(gram, square, kind, t, need_grad, split)
        except Exception as exc:
            if not is_compile_failure(exc):
                raise
            _fusion_failed = True
            warnings.warn(
                f"uniformity: torch.compile failed, running eager from now on: {exc!r:.300}",
                stacklevel=3,
            )
    return _block_energy(gram, square, kind, t, need_grad, split)


def _reduce(total: Tensor, n_pairs: int, kind: str) -> tuple[Tensor, Tensor]:
    """(loss, dloss/dtotal) from the sum of the potential over all pairs."""
    if kind == "gaussian":
        return (total / n_pairs).log(), 1.0 / total
    # torch.full, not new_tensor: a Python number copied to a GPU would synchronise the host
    return total / n_pairs, torch.full((), 1.0 / n_pairs, dtype=total.dtype, device=total.device)


def _check(unit: Tensor, kind: str) -> None:
    if kind not in UNIFORMITY_KINDS:
        raise LtrayError(f"unknown uniformity kind {kind!r}; valid: {', '.join(UNIFORMITY_KINDS)}")
    if unit.dim() != 2 or unit.shape[0] < 2:
        raise LtrayError(f"uniformity needs a [C >= 2, D] weight, got {tuple(unit.shape)}")


def _bf16_parts(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (fp32) = hi + lo + O(2^-16 |x|), hi and lo in bf16."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.float()).to(torch.bfloat16)


def _mm_fp32_out(a: Tensor, b: Tensor, into: Tensor | None = None) -> Tensor:
    """a @ b of bf16 matrices, the exact products summed in fp32: on CUDA on tensor cores
    (``out_dtype``, torch >= 2.8); elsewhere, or where that is refused, in an fp32 matmul of
    the same numbers (slower on a GPU, with one warning). With ``into`` (fp32), the product
    is added into it, in place and returned: on CUDA in the matmul's epilogue (``addmm``,
    beta = 1), which reads ``into`` once instead of a separate pass over both."""
    global _fp32_out_failed, _fp32_addmm_failed
    if a.is_cuda and not _fp32_out_failed:
        if into is not None and not _fp32_addmm_failed:
            try:
                return torch.addmm(into, a, b, out_dtype=torch.float32, out=into)
            except torch.OutOfMemoryError:
                raise
            except (TypeError, NotImplementedError, RuntimeError) as exc:
                _fp32_addmm_failed = True
                warnings.warn(
                    f"uniformity bf16x3: torch.addmm(out_dtype=float32) failed, the products "
                    f"are added in a pass of their own from now on: {exc!r:.200}",
                    stacklevel=2,
                )
        try:
            product = torch.mm(a, b, out_dtype=torch.float32)
            return product if into is None else into.add_(product)
        except (TypeError, NotImplementedError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "dtype" not in str(exc):
                raise  # out of memory and the like: not this overload's absence
            _fp32_out_failed = True
            warnings.warn(
                f"uniformity bf16x3: torch.mm(out_dtype=float32) failed, the products run in "
                f"fp32 matmuls from now on (same numbers, slower): {exc!r:.200}",
                stacklevel=2,
            )
    if into is None:
        return torch.mm(a.float(), b.float())
    return torch.addmm(into, a.float(), b.float(), out=into)


@dataclass(frozen=True)
class _Operand:
    """A matrix as its matmuls take it: ``(x,)``, or its bf16 parts ``(hi, lo)``."""

    parts: tuple[Tensor, ...]

    @classmethod
    def of(cls, x: Tensor, gram: str) -> _Operand:
        if x.dtype != torch.float32:  # fp64 stays fp64; bf16 is already rounded
            return cls((x,))
        if gram == "bf16x3":
            return cls(_bf16_parts(x))
        return cls((x.to(torch.bfloat16) if gram == "bf16" else x,))

    def rows(self, r0: int, r1: int) -> _Operand:
        return _Operand(tuple(p[r0:r1] for p in self.parts))

    def columns(self, c0: int) -> _Operand:
        return _Operand(tuple(p[:, c0:] for p in self.parts))

    def t(self) -> _Operand:
        return _Operand(tuple(p.T for p in self.parts))

    def __matmul__(self, other: _Operand) -> Tensor:
        return self.matmul(other)

    def matmul(self, other: _Operand, into: Tensor | None = None) -> Tensor:
        """self @ other; with ``into``, added into it in place (and returned), each product
        summed into it by the matmul itself where the dtypes allow."""
        if len(self.parts) == 1:
            a, b = self.parts[0], other.parts[0]
            if into is None:
                return torch.mm(a, b)
            if a.dtype == into.dtype:
                return torch.addmm(into, a, b, out=into)
            return into.add_(torch.mm(a, b))  # bf16 products into the fp32 gradient
        (hi, lo), (other_hi, other_lo) = self.parts, other.parts
        out = _mm_fp32_out(lo, other_hi, into)  # the small terms first
        out = _mm_fp32_out(hi, other_lo, out)
        return _mm_fp32_out(hi, other_hi, out)


def _aligned(x: Tensor) -> Tensor:
    """``x`` with zero rows and columns appended up to multiples of ``ALIGN`` (``x`` itself
    where they are already). Every matmul operand and product then has a leading dimension of
    a whole number of 16-byte words: cuBLAS runs its tensor-core kernels at full speed only on
    such layouts (a leading dimension of 8,142 bf16 numbers leaves it kernels that load 4 bytes
    at a time; torch's inductor pads its matmuls to the same multiples). A zero row's Gram
    entries are exactly 0 in every precision, so the loop sets them to the neutral value; its
    pulled gradient is cut off at the end."""
    rows, cols = x.shape
    pad_rows, pad_cols = -rows % ALIGN, -cols % ALIGN
    return F.pad(x, (0, pad_cols, 0, pad_rows)) if pad_rows or pad_cols else x


class _BlockedUniformity(torch.autograd.Function):
    """The energy of unit rows [C, D], by row blocks, with the gradient from the forward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        unit: Tensor,
        kind: str,
        t: float,
        block_rows: int,
        gram: str,
        fused: bool,
    ) -> Tensor:
        work_dtype = torch.float64 if unit.dtype == torch.float64 else torch.float32
        need_grad = ctx.needs_input_grad[0]
        num_rows, dim = unit.shape
        padded = _aligned(unit.detach())  # [C', D'], zero rows and columns past [C, D]
        rows = _Operand.of(padded, gram)
        total = unit.new_zeros((), dtype=torch.float64)
        pulled = torch.zeros_like(padded, dtype=work_dtype) if need_grad else None
        with torch.autocast(unit.device.type, enabled=False):
            for r0 in range(0, num_rows, block_rows):
                r1 = min(r0 + block_rows, num_rows)
                these_rows = rows.rows(r0, r1)
                onward_rows = rows.rows(r0, padded.shape[0])  # these, every later one, zeros
                block = these_rows @ onward_rows.t()  # [r1 - r0, C' - r0]
                block.diagonal().fill_(_NEUTRAL_GRAM[kind])
                if padded.shape[0] > num_rows:  # the zero rows' columns
                    block[:, num_rows - r0 :].fill_(_NEUTRAL_GRAM[kind])
                block_total, dphi_parts = _run_block_energy(
                    block, r1 - r0, kind, t, need_grad, len(rows.parts) == 2, fused
                )
                total += block_total
                if pulled is not None:
                    dphi_op = _Operand(dphi_parts)
                    if kind == "mhe_s0":  # phi'(1) of the log energy is not 0
                        for part in dphi_parts:
                            part.diagonal().zero_()
                    dphi_op.matmul(onward_rows, into=pulled[r0:r1])
                    if r1 < num_rows:  # the later rows' pairs with this block, transposed
                        dphi_op.columns(r1 - r0).t().matmul(these_rows, into=pulled[r1:])
        loss, dloss_dtotal = _reduce(total, num_rows * (num_rows - 1), kind)
        if pulled is not None:
            pulled = pulled[:num_rows, :dim].mul_(-4.0 * dloss_dtotal.to(work_dtype))
            ctx.save_for_backward(pulled.to(unit.dtype))
        return loss.to(work_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        (grad_unit,) = ctx.saved_tensors
        return grad_loss.to(grad_unit.dtype) * grad_unit, None, None, None, None, None


def _unit_rows(weight: Tensor) -> Tensor:
    """Rows scaled to norm 1, in fp32 (fp64 stays fp64), outside autocast."""
    work = weight if weight.dtype == torch.float64 else weight.float()
    with torch.autocast(weight.device.type, enabled=False):
        return F.normalize(work, dim=1)


def resolve_gram(gram: str, device: torch.device, rows: int) -> str:
    """``auto`` made concrete for ``rows`` classes: ``bf16x3`` on CUDA from BF16X3_MIN_ROWS
    rows on, ``fp32`` elsewhere."""
    if gram not in GRAM_PRECISIONS:
        raise LtrayError(
            f"uniformity Gram precision: unknown {gram!r}; valid: {', '.join(GRAM_PRECISIONS)}"
        )
    if gram == "auto":
        return "bf16x3" if device.type == "cuda" and rows >= BF16X3_MIN_ROWS else "fp32"
    return gram


def uniformity_loss(
    weight: Tensor,
    kind: str,
    t: float = 2.0,
    block_rows: int = 1024,
    gram: str = "auto",
    fused: bool | None = None,
) -> Tensor:
    """Uniformity energy of the rows of ``weight`` [C, D] (any norms), a scalar to minimise.

    ``gram`` is the precision of the matmuls (module docstring); ``fused`` compiles the
    elementwise work on each block into one kernel (torch.compile); None means on CUDA only,
    where unfused it would move ~60 bytes per pair through memory and cost about as much as
    the matmuls. Traced by an enclosing torch.compile, the pass is left to that graph.
    """
    unit = _unit_rows(weight)
    _check(unit, kind)
    if block_rows < 1:
        raise LtrayError(f"uniformity block_rows must be >= 1, got {block_rows}")
    gram = resolve_gram(gram, unit.device, unit.shape[0])
    # inside a compiled step (scaling.compile) the step's own graph fuses the block pass
    fused = (unit.is_cuda if fused is None else fused) and not torch.compiler.is_compiling()
    return _BlockedUniformity.apply(unit, kind, t, block_rows, gram, fused)


def uniformity_loss_naive(weight: Tensor, kind: str, t: float = 2.0) -> Tensor:
    """Reference: full Gram matrix, boolean off-diagonal mask, autograd (slow; tests, bench)."""
    unit = _unit_rows(weight)
    _check(unit, kind)
    num_rows = unit.shape[0]
    mask = ~torch.eye(num_rows, dtype=torch.bool, device=unit.device)
    d2 = (2.0 - 2.0 * (unit @ unit.T)[mask]).clamp_min(D2_EPS)
    if kind == "gaussian":
        return d2.mul(-t).exp().mean().log()
    if kind == "mhe_s0":
        return (-0.5 * d2.log()).mean()
    if kind == "mhe_s1":
        return d2.rsqrt().mean()
    return d2.reciprocal().mean()
