"""The local arithmetic of SyncBatchNorm (DESIGN.md §3) around its two rounds:
moments before the forward round, normalization after it, the backward sums
before the backward round, dx after it. Each fast function has its naive float64
twin below it (the reference the tests compare with). x is (N, C, *); the
statistics are float64 (C,); outputs are in x's dtype.

Why the fast forms are accurate when |mean| ≫ std: the mean is split into
m_hi = mean rounded to x's dtype and m_lo = mean − m_hi (float64, tiny), and the
centred input xc = x − m_hi is one subtraction of nearby values in x's dtype
(exact or nearly: Sterbenz). Every large term is gone before a product is
rounded, so y and dx carry the relative error of x's dtype, not |mean|/std
times it. The sums that go on the wire are float64 over float64 products."""

import torch
import torch.nn.functional as F


def _bcast(v, x):
    """(C,) → (1, C, 1, …) to broadcast against x."""
    return v.view([1, -1] + [1] * (x.dim() - 2))


def _dims(x):
    return [0] + list(range(2, x.dim()))


# --- forward: local moments ------------------------------------------------------------

def local_moments(x):
    """(mean (C,), M2 (C,)) float64 of x (N, C, *) with N·∏* > 0: two passes in
    float64 (mean, then Σ(x − mean)²), each a vectorized reduction; ~10× faster
    than torch.var_mean's float64 Welford on CPU."""
    x64 = x.detach().to(torch.float64)  # (N, C, *)
    dims = _dims(x)
    mean = x64.mean(dims)  # (C,)
    # In place on the copy; a float64 x has no copy, so it gets a new tensor.
    d = x64.sub_(_bcast(mean, x)) if x.dtype != torch.float64 else x64 - _bcast(mean, x)
    return mean, (d * d).sum(dims)


def local_moments_naive(x):
    """Twin: ATen's float64 Welford."""
    dims = _dims(x)
    n = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.detach().to(torch.float64), dims, unbiased=False)
    return mean, var * n


# --- forward: normalize with the group's statistics -------------------------------------

def split_mean(mean, dtype):
    """(m_hi in dtype (C,), m_lo float64 (C,)) with m_hi + m_lo = mean."""
    hi = mean.to(dtype)
    return hi, mean - hi.to(torch.float64)


def normalize(x, mean, var, weight, bias, eps):
    """y = γ·(x − mean)·invstd + β in x's dtype, two passes: xc = x − m_hi, then
    y = xc·α + (β − m_lo·α)."""
    hi, lo = split_mean(mean, x.dtype)
    alpha = (var + eps).rsqrt()  # (C,) float64
    if weight is not None:
        alpha = alpha * weight.detach().to(torch.float64)
    shift = -lo * alpha
    if bias is not None:
        shift = shift + bias.detach().to(torch.float64)
    xc = x.detach() - _bcast(hi, x)  # (N, C, *)
    return torch.addcmul(_bcast(shift.to(x.dtype), x), xc, _bcast(alpha.to(x.dtype), x))


def normalize_naive(x, mean, var, weight, bias, eps):
    """Twin: PyTorch's eval-mode BN in float64, rounded once."""
    w = weight.detach().to(torch.float64) if weight is not None else None
    b = bias.detach().to(torch.float64) if bias is not None else None
    return F.batch_norm(x.detach().to(torch.float64), mean, var, w, b, False, 0.0, eps).to(x.dtype)


# --- backward: local sums ---------------------------------------------------------------

def backward_sums(dy, x, mean, var, eps):
    """(Σdy, Σdy·x̂) float64 (C,) over this rank's elements, x̂ = (x − mean)·invstd:
    ATen's eval-mode BN backward on float64 copies (one fused pass, float64
    products and sums; x in float64 is exact, so the sums are float64-exact)."""
    _, s2, s1 = torch.ops.aten.native_batch_norm_backward(
        dy.to(torch.float64), x.detach().to(torch.float64), None, mean, var, None, None, False, eps, [False, True, True]
    )
    return s1, s2


def backward_sums_naive(dy, x, mean, var, eps):
    """Twin: x̂ in float64, then two float64 sums."""
    dims = _dims(x)
    dy64 = dy.to(torch.float64)
    xhat = F.batch_norm(x.detach().to(torch.float64), mean, var, None, None, False, 0.0, eps)
    return dy64.sum(dims), (dy64 * xhat).sum(dims)


# --- backward: dx with the group's sums --------------------------------------------------

def input_grad(dy, x, mean, var, weight, eps, s1, s2, n):
    """dx = γ·invstd·(dy − S1/n − x̂·S2/n) in dy's dtype with the group's sums and
    count n > 0, as dy·a + xc·k + c (three passes: xc = x − m_hi, then two fused
    multiply-adds): a = γ·invstd, k = −a·invstd·S2/n, c = −a·S1/n − k·m_lo."""
    hi, lo = split_mean(mean, x.dtype)
    xc = x.detach() - _bcast(hi, x)  # (N, C, *)
    invstd = (var + eps).rsqrt()
    a = invstd if weight is None else invstd * weight.detach().to(torch.float64)
    k = -a * invstd * s2 / n
    c = -a * s1 / n - k * lo
    t = torch.addcmul(_bcast(c.to(dy.dtype), dy), dy, _bcast(a.to(dy.dtype), dy))
    return t.addcmul_(xc, _bcast(k.to(dy.dtype), dy))


def input_grad_naive(dy, x, mean, var, weight, eps, s1, s2, n):
    """Twin: in float64, rounded once."""
    invstd = (var + eps).rsqrt()
    scale = invstd if weight is None else invstd * weight.detach().to(torch.float64)
    xhat = F.batch_norm(x.detach().to(torch.float64), mean, var, None, None, False, 0.0, eps)
    dx = dy.to(torch.float64) - _bcast(s1 / n, x) - xhat * _bcast(s2 / n, x)
    return (dx * _bcast(scale, x)).to(dy.dtype)
