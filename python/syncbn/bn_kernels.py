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
times it. The sums that go on the wire are float64 over float64 products.

Temporaries live in a scratch pool reused by every layer (layers run one at a
time): a fresh megabyte-sized tensor per call is a fresh mmap whose pages fault
on first touch, which cost more than the arithmetic (≈ 250 faults per layer call
of (8, 16, 32, 32)). Only y and dx, which autograd keeps, are new tensors."""

import math

import numpy as np
import torch
import torch.nn.functional as F

# (tag, dtype) → flat tensor of the largest size asked for so far.
_scratch = {}


def _scratch_like(tag, shape, dtype):
    """A tensor of `shape` and `dtype` over the pool's buffer `tag` (contents undefined)."""
    n = math.prod(shape)
    buf = _scratch.get((tag, dtype))
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        _scratch[(tag, dtype)] = buf
    return buf[:n].view(shape)


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
    d = _scratch_like("a", x.shape, torch.float64).copy_(x.detach())  # (N, C, *)
    dims = _dims(x)
    mean = d.mean(dims)  # (C,)
    d.sub_(_bcast(mean, x))
    return mean, torch.mul(d, d, out=_scratch_like("b", x.shape, torch.float64)).sum(dims)


def local_moments_naive(x):
    """Twin: ATen's float64 Welford."""
    dims = _dims(x)
    n = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.detach().to(torch.float64), dims, unbiased=False)
    return mean, var * n


# --- forward: normalize with the group's statistics -------------------------------------
# Per-channel values (mean, var, sums: float64 (C,), numpy arrays or tensors) are
# combined in numpy: a numpy op on C values costs well under a microsecond, a torch
# op several, and a layer has about twenty of them.

def _f64(v):
    return np.asarray(v, dtype=np.float64)


def _param64(p):
    return None if p is None else p.detach().to(torch.float64).numpy()


def _coef(v, x):
    """A float64 (C,) numpy array as a tensor of x's dtype shaped to broadcast against x."""
    return _bcast(torch.from_numpy(np.ascontiguousarray(v)).to(x.dtype), x)


def split_mean(mean, dtype):
    """(m_hi: tensor of dtype (C,), m_lo: float64 numpy (C,)) with m_hi + m_lo = mean."""
    m = _f64(mean)
    hi = torch.from_numpy(np.ascontiguousarray(m)).to(dtype)
    return hi, m - hi.to(torch.float64).numpy()


def normalize(x, mean, var, weight, bias, eps):
    """y = γ·(x − mean)·invstd + β in x's dtype, two passes: xc = x − m_hi, then
    y = xc·α + (β − m_lo·α)."""
    hi, lo = split_mean(mean, x.dtype)
    alpha = 1.0 / np.sqrt(_f64(var) + eps)  # (C,)
    if weight is not None:
        alpha = alpha * _param64(weight)
    shift = -lo * alpha
    if bias is not None:
        shift = shift + _param64(bias)
    xc = torch.sub(x.detach(), _bcast(hi, x), out=_scratch_like("c", x.shape, x.dtype))  # (N, C, *)
    return torch.addcmul(_coef(shift, x), xc, _coef(alpha, x))


def _t64(v):
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


def normalize_naive(x, mean, var, weight, bias, eps):
    """Twin: PyTorch's eval-mode BN in float64, rounded once."""
    mean, var = _t64(mean), _t64(var)
    w = weight.detach().to(torch.float64) if weight is not None else None
    b = bias.detach().to(torch.float64) if bias is not None else None
    return F.batch_norm(x.detach().to(torch.float64), mean, var, w, b, False, 0.0, eps).to(x.dtype)


# --- backward: local sums ---------------------------------------------------------------

def backward_sums(dy, x, mean, var, eps):
    """(Σdy, Σdy·x̂) float64 (C,) tensors over this rank's elements, x̂ = (x − mean)·invstd:
    ATen's eval-mode BN backward on float64 copies (one fused pass, float64
    products and sums; x in float64 is exact, so the sums are float64-exact)."""
    dy64 = _scratch_like("b", dy.shape, torch.float64).copy_(dy)  # (N, C, *)
    x64 = _scratch_like("a", x.shape, torch.float64).copy_(x.detach())  # (N, C, *)
    m, v = torch.from_numpy(np.ascontiguousarray(_f64(mean))), torch.from_numpy(np.ascontiguousarray(_f64(var)))
    _, s2, s1 = torch.ops.aten.native_batch_norm_backward(dy64, x64, None, m, v, None, None, False, eps, [False, True, True])
    return s1, s2


def backward_sums_naive(dy, x, mean, var, eps):
    """Twin: x̂ in float64, then two float64 sums."""
    mean, var = _t64(mean), _t64(var)
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
    xc = torch.sub(x.detach(), _bcast(hi, x), out=_scratch_like("c", x.shape, x.dtype))  # (N, C, *)
    invstd = 1.0 / np.sqrt(_f64(var) + eps)
    a = invstd if weight is None else invstd * _param64(weight)
    k = -a * invstd * _f64(s2) / n
    c = -a * _f64(s1) / n - k * lo
    return torch.addcmul(_coef(c, dy), dy, _coef(a, dy)).addcmul_(xc, _coef(k, dy))


def input_grad_naive(dy, x, mean, var, weight, eps, s1, s2, n):
    """Twin: in float64, rounded once."""
    mean, var, s1, s2 = _t64(mean), _t64(var), _t64(s1), _t64(s2)
    invstd = (var + eps).rsqrt()
    scale = invstd if weight is None else invstd * weight.detach().to(torch.float64)
    xhat = F.batch_norm(x.detach().to(torch.float64), mean, var, None, None, False, 0.0, eps)
    dx = dy.to(torch.float64) - _bcast(s1 / n, x) - xhat * _bcast(s2 / n, x)
    return (dx * _bcast(scale, x)).to(dy.dtype)
