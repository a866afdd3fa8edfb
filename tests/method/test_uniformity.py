"""The uniformity term: formulas, blocked == naive, invariances, the simplex, the Gram precisions
(bf16x3, the GPU default, and the bf16 opt-in) against fp64."""

import itertools
import math
import warnings

import pytest
import torch

from ltray.errors import LtrayError
from ltray.losses import uniformity
from ltray.losses.uniformity import (
    UNIFORMITY_KINDS,
    resolve_gram,
    uniformity_loss,
    uniformity_loss_naive,
)

T = 2.0


def reference(weight, kind, t=T):
    """The energy straight from its definition: a double loop over ordered pairs i != j."""
    w = weight.double()
    u = [w[i] / torch.sqrt((w[i] ** 2).sum()) for i in range(len(w))]
    dist = [
        torch.sqrt(((u[i] - u[j]) ** 2).sum()) for i, j in itertools.permutations(range(len(u)), 2)
    ]
    if kind == "mhe_s0":
        return torch.stack([-torch.log(d) for d in dist]).mean()
    if kind == "mhe_s1":
        return torch.stack([1 / d for d in dist]).mean()
    if kind == "mhe_s2":
        return torch.stack([1 / d**2 for d in dist]).mean()
    return torch.log(torch.stack([torch.exp(-t * d**2) for d in dist]).mean())


def random_rows(c, d, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(c, d, generator=gen, dtype=dtype)


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_matches_the_formula(kind):
    w = random_rows(9, 5)
    expected = reference(w, kind)
    torch.testing.assert_close(uniformity_loss(w, kind, t=T, block_rows=4), expected)
    torch.testing.assert_close(uniformity_loss_naive(w, kind, t=T), expected)


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_equals_naive_in_value_and_gradient(kind, dtype):
    w1 = random_rows(37, 12, seed=1, dtype=dtype).requires_grad_()  # 37 = 3 blocks of 10 + 7
    w2 = w1.detach().clone().requires_grad_()
    blocked = uniformity_loss(w1, kind, t=T, block_rows=10)
    naive = uniformity_loss_naive(w2, kind, t=T)
    blocked.backward()
    naive.backward()
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(blocked, naive, **tol)
    torch.testing.assert_close(w1.grad, w2.grad, **tol)
    single = uniformity_loss(w1.detach(), kind, t=T, block_rows=1000)  # one block: plain
    torch.testing.assert_close(single, blocked.detach(), **tol)


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_passes_gradcheck(kind):
    w = random_rows(7, 4, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: uniformity_loss(x, kind, t=T, block_rows=3), (w,))


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_invariant_to_row_scaling_and_order(kind):
    w = random_rows(11, 6, seed=3)
    base = uniformity_loss(w, kind, block_rows=4)
    scales = torch.rand(11, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(uniformity_loss(w * scales, kind, block_rows=4), base)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(uniformity_loss(w[perm], kind, block_rows=4), base)


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_minimising_it_reaches_the_regular_simplex(kind):
    c, d = 6, 8  # C <= d + 1: the optimum is the regular simplex, cos = -1 / (C - 1)
    w = random_rows(c, d, seed=5, dtype=torch.float32).requires_grad_()
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        uniformity_loss(w, kind, t=T, block_rows=4).backward()
        opt.step()
    u = torch.nn.functional.normalize(w.detach(), dim=1)
    cos = (u @ u.T)[~torch.eye(c, dtype=torch.bool)]
    assert cos.sub(-1 / (c - 1)).abs().max().item() < 0.01


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_the_opt_in_bf16_gram_is_within_its_stated_tolerance_of_fp32(kind):
    """The stated accuracy of the bf16 Gram for rows >= 30 degrees apart: the loss within 1e-3
    relative and the gradient's cosine to fp32's at least 0.999."""
    gen = torch.Generator().manual_seed(6)
    base = torch.randn(100, 64, generator=gen)
    w = torch.cat([base, base + 0.8 * torch.randn(100, 64, generator=gen)])  # close pairs
    u = torch.nn.functional.normalize(w, dim=1)
    closest = (u @ u.T).fill_diagonal_(-1).max().item()
    assert 30 <= math.degrees(math.acos(closest)) < 35
    w32 = w.clone().requires_grad_()
    w16 = w.clone().requires_grad_()
    exact = uniformity_loss(w32, kind, t=T, block_rows=64)
    exact.backward()
    fast = uniformity_loss(w16, kind, t=T, block_rows=64, gram="bf16")
    fast.backward()
    assert fast.dtype == torch.float32
    assert abs(fast.item() - exact.item()) <= 1e-3 * abs(exact.item())
    grad_cos = torch.nn.functional.cosine_similarity(w16.grad.flatten(), w32.grad.flatten(), 0)
    assert grad_cos.item() >= 0.999
    assert not torch.equal(w16.grad, w32.grad)  # it really took the bf16 path


def close_pairs(spread, seed=6):
    """200 rows in 64 dims: 100 random ones and a perturbed copy of each, ``spread`` apart."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(100, 64, generator=gen)
    return torch.cat([base, base + spread * torch.randn(100, 64, generator=gen)])


def errors_against_fp64(w, kind, gram, device="cpu"):
    """(relative error of the loss, relative error of the gradient's norm) of fp32 rows ``w``
    with ``gram`` on ``device``, against the same rows in fp64."""
    exact_w = w.double().requires_grad_()
    exact = uniformity_loss(exact_w, kind, t=T, block_rows=64)
    exact.backward()
    x = w.detach().to(device).clone().requires_grad_()
    got = uniformity_loss(x, kind, t=T, block_rows=64, gram=gram)
    got.backward()
    assert got.dtype == torch.float32
    loss_error = abs(got.item() - exact.item()) / abs(exact.item())
    grad_error = (x.grad.cpu().double() - exact_w.grad).norm() / exact_w.grad.norm()
    return loss_error, grad_error.item()


def closest_degrees(w):
    u = torch.nn.functional.normalize(w.double(), dim=1)
    return math.degrees(math.acos((u @ u.T).fill_diagonal_(-1).max().item()))


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_bf16x3_keeps_about_16_bits_where_bf16_keeps_8(kind):
    """bf16x3 represents each operand as hi + lo to 2^-17, so a Gram entry of unit rows is off
    by about 2^-17 / sqrt(d) with random-sign rounding (bf16: 2^-9, and the Gram itself rounded
    to 8 bits). The pair distances 2 - 2g amplify that by 1 / d2: 4 at 30 degrees, 150 at 4.4.
    The bounds are 10-30x the errors expected from that model (measured: loss 1e-7 / 5e-7, gradient
    7e-6 / 4e-4), and bf16 must do at least 100x worse on the close pairs' gradient."""
    far, near = close_pairs(0.8), close_pairs(0.1)
    assert 30 <= closest_degrees(far) < 31 and 4 <= closest_degrees(near) < 5
    loss_far, grad_far = errors_against_fp64(far, kind, "bf16x3")
    assert loss_far <= 2e-6 and grad_far <= 1e-4
    loss_near, grad_near = errors_against_fp64(near, kind, "bf16x3")
    assert loss_near <= 1e-5 and grad_near <= 5e-3
    _, bf16_grad_near = errors_against_fp64(near, kind, "bf16")
    assert bf16_grad_near >= 100 * grad_near
    fp32_w, split_w = far.clone().requires_grad_(), far.clone().requires_grad_()
    uniformity_loss(fp32_w, kind, t=T, gram="fp32").backward()
    uniformity_loss(split_w, kind, t=T, gram="bf16x3").backward()
    assert not torch.equal(split_w.grad, fp32_w.grad)  # it really took the split path


def test_auto_is_bf16x3_on_cuda_and_fp32_elsewhere_and_fp64_stays_fp64():
    assert resolve_gram("auto", torch.device("cuda"), 8142) == "bf16x3"
    assert resolve_gram("auto", torch.device("cuda"), 2048) == "bf16x3"
    assert resolve_gram("auto", torch.device("cuda"), 2047) == "fp32"  # too few to pay
    assert resolve_gram("auto", torch.device("cpu"), 8142) == "fp32"
    assert resolve_gram("bf16", torch.device("cuda"), 10) == "bf16"
    assert resolve_gram("bf16x3", torch.device("cpu"), 10) == "bf16x3"
    with pytest.raises(LtrayError, match="unknown 'tf32'; valid: auto, fp32, bf16x3, bf16"):
        resolve_gram("tf32", torch.device("cpu"), 10)
    w = close_pairs(0.8)[:40]
    torch.testing.assert_close(
        uniformity_loss(w, "mhe_s2"), uniformity_loss(w, "mhe_s2", gram="fp32"), rtol=0, atol=0
    )
    w64 = w.double()
    for gram in ("bf16x3", "bf16"):  # fp64 rows (gradcheck) are never rounded
        torch.testing.assert_close(
            uniformity_loss(w64, "mhe_s2", gram=gram),
            uniformity_loss(w64, "mhe_s2", gram="fp32"),
            rtol=0,
            atol=0,
        )


def truncation_error(w, kind, ulps=4):
    """The relative error of the loss of rows ``w`` when every Gram entry is moved ``ulps`` fp32
    units in the last place towards zero (fp64 otherwise)."""
    u = torch.nn.functional.normalize(w.double(), dim=1)
    gram = u @ u.T
    ulp = torch.where(gram.abs() < 1, 2.0**-24, 2.0**-23)
    off = ~torch.eye(len(w), dtype=torch.bool)
    exact = uniformity._potential((2 - 2 * gram)[off], kind, T).mean()
    shifted = uniformity._potential((2 - 2 * (gram - gram.sign() * ulps * ulp))[off], kind, T)
    return (abs(shifted.mean() - exact) / abs(exact)).item()


def test_truncation_error_is_the_bias_of_close_pairs():
    """4 ulps towards zero on g ~ 0.995 move d2 (0.006-0.018) by 4.8e-7: mhe_s2's 1/d2 by 3e-5 to
    8e-5 on the 100 close pairs, which hold half the loss; the log energy hardly moves."""
    near = close_pairs(0.1)
    assert 2e-5 <= truncation_error(near, "mhe_s2") <= 4e-5
    assert truncation_error(near, "mhe_s0") <= 1e-6
    assert truncation_error(near, "mhe_s2", ulps=1) == pytest.approx(
        truncation_error(near, "mhe_s2") / 4, rel=1e-3
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["mhe_s0", "mhe_s2"])
def test_bf16x3_on_cuda_keeps_the_bits_it_keeps_on_the_cpu(kind):
    """On CUDA the products run on tensor cores with fp32 sums (mm with out_dtype). Tensor cores
    truncate when they add into the fp32 accumulator (Fasi et al., "Numerical behavior of NVIDIA
    tensor cores", PeerJ CS 2021): each Gram entry is biased towards zero, by up to an ulp per
    accumulation step, and with d = 64 that is bounded here by 4 ulps. The bias does not average
    out over pairs as the CPU's round-to-nearest errors do, and the close pairs' 2 - 2g amplifies
    it: mhe_s2's loss came out 1.2e-5 from fp64 on an H200 (2026-11-28; the CPU's emulation: 5e-7).
    So the loss bound is the CPU's plus that bias; the gradient's is the CPU's (the bias moves it
    by 1.1e-4)."""
    near = close_pairs(0.1)
    loss_near, grad_near = errors_against_fp64(near, kind, "bf16x3", device="cuda")
    assert loss_near <= 1e-5 + truncation_error(near, kind) and grad_near <= 5e-3
    hi, lo = uniformity._bf16_parts(torch.nn.functional.normalize(near, dim=1))
    torch.testing.assert_close(
        uniformity._mm_fp32_out(hi.cuda(), lo.cuda().T).cpu(),
        uniformity._mm_fp32_out(hi, lo.T),
        rtol=0,
        atol=1e-5 * 2**-8,  # lo is 2^-8 of the rows
    )


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_autocast_does_not_lower_the_gram_to_bf16(kind):
    w = random_rows(300, 32, seed=11, dtype=torch.float32)
    plain, cast = w.clone().requires_grad_(), w.clone().requires_grad_()
    expected = uniformity_loss(plain, kind, t=T, block_rows=64)
    expected.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = uniformity_loss(cast, kind, t=T, block_rows=64)
    got.backward()
    # the same fp32 kernels on the same inputs: equal up to nothing
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(cast.grad, plain.grad, rtol=0, atol=0)


def test_coincident_rows_are_clamped_and_pass_no_gradient_like_the_naive_clamp():
    for kind in UNIFORMITY_KINDS:
        # rows 0 and 1 coincide, row 2 is 1e-4 rad from them (d2 = 1e-8 < D2_EPS)
        w = torch.tensor(
            [[1.0, 0.0], [2.0, 0.0], [1.0, 1e-4], [0.0, 1.0]], dtype=torch.float64
        ).requires_grad_()
        w_naive = w.detach().clone().requires_grad_()
        loss = uniformity_loss(w, kind)
        naive = uniformity_loss_naive(w_naive, kind)
        loss.backward()
        naive.backward()
        assert math.isfinite(loss.item())
        torch.testing.assert_close(loss, naive)
        torch.testing.assert_close(w.grad, w_naive.grad)


@pytest.mark.parametrize("kind", UNIFORMITY_KINDS)
def test_gradient_with_respect_to_the_unit_rows_themselves(kind):
    """The custom backward is exact for unit rows, not only after normalisation's projection."""
    u = torch.nn.functional.normalize(random_rows(9, 4, seed=9), dim=1).requires_grad_()
    loss = uniformity._BlockedUniformity.apply(u, kind, T, 4, "fp32", False)
    (grad,) = torch.autograd.grad(loss, u)
    u_ref = u.detach().clone().requires_grad_()
    d2 = (2 - 2 * u_ref @ u_ref.T)[~torch.eye(9, dtype=torch.bool)]
    potential = {
        "mhe_s0": lambda x: (-0.5 * x.log()).mean(),
        "mhe_s1": lambda x: x.rsqrt().mean(),
        "mhe_s2": lambda x: x.reciprocal().mean(),
        "gaussian": lambda x: x.mul(-T).exp().mean().log(),
    }[kind]
    (expected,) = torch.autograd.grad(potential(d2), u_ref)
    torch.testing.assert_close(grad, expected)


def test_large_class_count_runs_blocked():
    w = random_rows(2500, 32, seed=7, dtype=torch.float32).requires_grad_()
    loss = uniformity_loss(w, "mhe_s2", block_rows=1024)
    loss.backward()
    assert w.grad.shape == w.shape
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("gram, products", [("fp32", 1), ("bf16x3", 3)])
def test_each_pair_is_multiplied_once_for_the_gram(gram, products):
    """The Gram is symmetric: row block k (100 rows) meets itself and the later rows only, so
    the Gram takes sum_k 100 (1000 - 100 k) d multiply-adds (550,000 d, of the whole Gram's
    1,000,000 d), the gradient's pull the same and, transposed, sum_k 100 (900 - 100 k) d
    (450,000 d) more: 1,550,000 d where Gram and pull over whole rows take 2,000,000 d."""
    from torch.utils.flop_counter import FlopCounterMode

    w = random_rows(1000, 8, seed=8, dtype=torch.float32).requires_grad_()
    with FlopCounterMode(display=False) as counter:
        uniformity_loss(w, "mhe_s2", block_rows=100, gram=gram, fused=False).backward()
    assert counter.get_total_flops() == products * 2 * 1_550_000 * 8


@pytest.mark.parametrize("gram", ["fp32", "bf16x3", "bf16"])
def test_every_matmul_operand_is_aligned_to_16_bytes(gram):
    """203 classes of 37 features, blocks of 64: unpadded, the Gram's blocks would be 203 - r0
    wide and the rows 37 long, so matmul operands and products with leading dimensions of 148
    or 406 bytes, which cuBLAS's fast tensor-core kernels refuse. Every operand and product must
    start on a 16-byte boundary and have a leading dimension of whole 16-byte words."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulLayouts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.tensors = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten.mm:
                self.tensors += [args[0], args[1], out]
            elif func.overloadpacket is torch.ops.aten.addmm:  # a product added into the sums
                self.tensors += [args[0], args[1], args[2], out]
            return out

    w = random_rows(203, 37, seed=9, dtype=torch.float32).requires_grad_()
    with MatmulLayouts() as layouts:
        uniformity_loss(w, "mhe_s2", block_rows=64, gram=gram, fused=False).backward()
    assert len(layouts.tensors) >= 3 * 7  # Gram and pull for each of the 4 blocks, less one
    for x in layouts.tensors:
        size = x.element_size()
        leading = max(x.stride())  # the other stride is 1: each is a row- or column-major view
        assert min(x.stride()) == 1, x.stride()
        assert x.data_ptr() % 16 == 0 and leading * size % 16 == 0, (x.shape, x.stride())


@pytest.mark.parametrize("gram", ["fp32", "bf16x3", "bf16"])
def test_a_product_added_into_the_sums_is_the_product_plus_the_sums(gram):
    """The pulled gradient's accumulation: ``matmul(into=)`` adds the product into ``into``
    in place, as ``into + a @ b`` does, up to the order of fp32's sums. A product of depth K
    summed in fp32 is within K u S of the exact (u = 2^-24, S = sum |a_i b_i|, each part's
    product exact), so two orders of the three products are within 2 * 3 K u S of each other,
    and the four sums into ``into`` add 4 u of its magnitude."""
    depth = 40
    a = torch.randn(24, depth, generator=torch.Generator().manual_seed(1))
    b = torch.randn(depth, 16, generator=torch.Generator().manual_seed(2))
    sums = torch.randn(24, 16, generator=torch.Generator().manual_seed(3)) * 100
    left, right = uniformity._Operand.of(a, gram), uniformity._Operand.of(b, gram)
    expected = sums + left @ right
    into = sums.clone()
    out = left.matmul(right, into=into)
    assert out.data_ptr() == into.data_ptr()  # in place
    u = 2.0**-24
    scale = float(sums.abs().max() + (a.abs() @ b.abs()).max())
    assert torch.allclose(into, expected, rtol=0, atol=(2 * 3 * depth + 4) * u * scale)
    assert not torch.allclose(into, sums, rtol=0, atol=(2 * 3 * depth + 4) * u * scale)


def test_the_zero_rows_of_the_padding_leave_value_and_gradient_unchanged():
    """The same 203 x 37 rows against the naive term (no padding), in fp64 for every kind."""
    for kind in UNIFORMITY_KINDS:
        w1 = random_rows(203, 37, seed=10).requires_grad_()
        w2 = w1.detach().clone().requires_grad_()
        blocked = uniformity_loss(w1, kind, t=T, block_rows=64)
        naive = uniformity_loss_naive(w2, kind, t=T)
        blocked.backward()
        naive.backward()
        torch.testing.assert_close(blocked, naive)
        torch.testing.assert_close(w1.grad, w2.grad)
        assert w1.grad.shape == w1.shape


def test_bad_arguments_are_clear_errors():
    w = random_rows(4, 3)
    with pytest.raises(LtrayError, match="mhe_s2"):
        uniformity_loss(w, "mhe_s3")
    with pytest.raises(LtrayError, match="C >= 2"):
        uniformity_loss(w[:1], "mhe_s2")
    with pytest.raises(LtrayError, match="block_rows"):
        uniformity_loss(w, "mhe_s2", block_rows=0)


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=pytest.mark.slow),  # a C++ compile: slow on 2 cores
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
    ],
)
def test_fused_block_kernel_matches_eager(device):
    """The torch.compile'd elementwise pass (the CUDA default) against eager, with phi' as one
    fp32 part (fp32 Gram) and split in bf16x3's two parts inside the pass. The blocks narrow
    down the triangle (100, 68, 36 and 4 wide, the last 4 rows high, 4 zero columns of padding
    each): one kernel with dynamic sizes serves them all, compiled once a kind and split."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    w = random_rows(100, 16, seed=8, dtype=torch.float32).to(device)
    for kind, gram in itertools.product(("mhe_s0", "mhe_s2"), ("fp32", "bf16x3")):
        eager_w, fused_w = w.clone().requires_grad_(), w.clone().requires_grad_()
        eager = uniformity_loss(eager_w, kind, block_rows=32, gram=gram, fused=False)
        fused = uniformity_loss(fused_w, kind, block_rows=32, gram=gram, fused=True)
        eager.backward()
        fused.backward()
        torch.testing.assert_close(fused, eager)
        torch.testing.assert_close(fused_w.grad, eager_w.grad)
    assert not uniformity._fusion_failed  # it compiled, and did not fall back to eager
    assert counters["stats"]["unique_graphs"] == 4  # one a kind and split, not one a block


def _fails_with(exc):
    def compiled():
        def run(*args):
            raise exc

        return run

    return compiled


def test_a_compile_failure_falls_back_to_eager_once_with_a_warning(monkeypatch):
    from torch._inductor.exc import CppCompileError

    monkeypatch.setattr(uniformity, "_fusion_failed", False)
    monkeypatch.setattr(
        uniformity, "_compiled_block_energy", _fails_with(CppCompileError(["cc"], "no cc"))
    )
    w = random_rows(8, 4, seed=1, dtype=torch.float32)
    eager = uniformity_loss(w, "mhe_s2", block_rows=4, fused=False)
    with pytest.warns(UserWarning, match="torch.compile failed, running eager"):
        fused = uniformity_loss(w, "mhe_s2", block_rows=4, fused=True)
    torch.testing.assert_close(fused, eager, rtol=0, atol=0)  # the same eager code ran
    assert uniformity._fusion_failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        uniformity_loss(w, "mhe_s2", block_rows=4, fused=True)


def test_an_error_that_is_not_a_compile_failure_propagates(monkeypatch):
    monkeypatch.setattr(uniformity, "_fusion_failed", False)
    boom = RuntimeError("CUDA out of memory")
    monkeypatch.setattr(uniformity, "_compiled_block_energy", _fails_with(boom))
    with pytest.raises(RuntimeError, match="out of memory"):
        uniformity_loss(random_rows(8, 4, seed=1, dtype=torch.float32), "mhe_s2", fused=True)
    assert not uniformity._fusion_failed  # eager is still not forced for the process
