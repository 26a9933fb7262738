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
of (8, 16, 32, 32)). Only y and dx, which autograd keeps, are new tensors. The
centred xc = x − m_hi goes into the bytes of x's float64 copy, done with by then.

Per-channel values (mean, var, sums, coefficients: (C,)) are combined in numpy
float64: a numpy op on C values costs well under a microsecond, a torch op
several, and a layer call has a few dozen of them. What a pass over x needs
reaches torch as one (k, C) block converted to x's dtype at once."""

import math

import numpy as np
import torch
import torch.nn.functional as F

# tag → flat byte tensor of the largest size asked for so far, viewed as any dtype.
_scratch = {}
# (tag, dtype, shape) → the view of that buffer handed out last time: slicing and
# viewing anew costs a few µs per call.
_views = {}


def _scratch_like(tag, shape, dtype):
    """A tensor of `shape` and `dtype` over the pool's buffer `tag` (contents undefined)."""
    key = (tag, dtype, tuple(shape))
    v = _views.get(key)
    if v is not None:
        return v
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    buf = _scratch.get(tag)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        _scratch[tag] = buf
        # Views of the old buffer would keep it alive.
        for k in [k for k in _views if k[0] == tag]:
            del _views[k]
    if len(_views) >= 256:  # inputs of ever new shapes: start over rather than grow
        _views.clear()
    v = _views[key] = buf[:nbytes].view(dtype).view(shape)
    return v


def _bcast(v, x):
    """(C,) → (1, C, 1, …) to broadcast against x."""
    return v.view([1, -1] + [1] * (x.dim() - 2))


def _dims(x):
    return [0] + list(range(2, x.dim()))


# dtypes whose float64 → dtype rounding numpy does as torch does (a C cast, to nearest).
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _f64(v):
    return np.asarray(v, dtype=np.float64)


def _param64(p):
    """γ or β as float64 numpy (C,), or None."""
    if p is None:
        return None
    if p.dtype in _NP_DTYPE:
        return p.numpy(force=True).astype(np.float64)
    return p.detach().to(torch.float64).numpy()


def as_dtype(v, dtype):
    """A float64 numpy array as a new tensor of `dtype` (rounded by numpy where it can: cheaper than torch's .to)."""
    npd = _NP_DTYPE.get(dtype)
    return torch.from_numpy(v.astype(npd)) if npd is not None else torch.from_numpy(v).to(dtype)


def _coefs(rows, x):
    """The rows of a float64 numpy (k, C) as k tensors of x's dtype shaped (1, C, 1, …) against x."""
    return as_dtype(rows.reshape((len(rows), 1, rows.shape[1]) + (1,) * (x.dim() - 2)), x.dtype).unbind(0)


# --- forward: local moments ------------------------------------------------------------

def local_moments(x):
    """float64 numpy (2, C), rows mean and M2, of x (N, C, *) with N·∏* > 0: two
    passes in float64 (mean, then Σ(x − mean)²), each a vectorized reduction; ~10×
    faster than torch.var_mean's float64 Welford on CPU."""
    d = _scratch_like("a", x.shape, torch.float64).copy_(x.detach())  # (N, C, *)
    dims = _dims(x)
    mean = d.mean(dims)  # (C,)
    # Centred, then squared in place: one megabyte-sized buffer, not two.
    m2 = d.sub_(_bcast(mean, x)).square_().sum(dims)
    return np.concatenate((mean.numpy(), m2.numpy())).reshape(2, -1)


def local_moments_naive(x):
    """Twin: ATen's float64 Welford."""
    dims = _dims(x)
    n = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.detach().to(torch.float64), dims, unbiased=False)
    return mean, var * n


# --- forward: normalize with the group's statistics -------------------------------------

def split_mean(mean, dtype):
    """(m_hi, m_lo), float64 numpy (C,): m_hi = mean rounded to dtype (so exact in
    it), m_lo = mean − m_hi."""
    m = _f64(mean)
    npd = _NP_DTYPE.get(dtype)
    if npd is not None:
        hi = m.astype(npd).astype(np.float64)
    else:
        hi = torch.from_numpy(np.ascontiguousarray(m)).to(dtype).to(torch.float64).numpy()
    return hi, m - hi


def coefficients(x, mean, var, weight, eps):
    """What normalize and input_grad share, float64 numpy (C,) each: (m_hi, m_lo,
    invstd, α = γ·invstd). SyncBatchNorm computes them once per layer call and
    keeps them for the backward."""
    hi, lo = split_mean(mean, x.dtype)
    invstd = 1.0 / np.sqrt(_f64(var) + eps)
    return hi, lo, invstd, invstd if weight is None else invstd * _param64(weight)


def normalize(x, mean, var, weight, bias, eps, co=None):
    """y = γ·(x − mean)·invstd + β in x's dtype: xc = x − m_hi, then
    y = (β − m_lo·α) + xc·α. `co`: coefficients(x, mean, var, weight, eps) if at hand."""
    hi, lo, _, alpha = co or coefficients(x, mean, var, weight, eps)
    shift = -lo * alpha
    if bias is not None:
        shift = shift + _param64(bias)
    hi_t, alpha_t, shift_t = _coefs(np.concatenate((hi, alpha, shift)).reshape(3, -1), x)
    x = x.detach()
    xc = torch.sub(x, hi_t, out=_scratch_like("a", x.shape, x.dtype))  # (N, C, *)
    # y = shift + xc·α, one fused multiply-add per element. addcmul(shift, xc, α) rounds
    # alike, but with two broadcast operands it takes ATen's scalar loop, 3-4× slower
    # than filling y with shift and the vectorized addcmul_.
    return torch.empty_like(x).copy_(shift_t.expand_as(x)).addcmul_(xc, alpha_t)


def _t64(v):
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


def normalize_naive(x, mean, var, weight, bias, eps):
    """Twin: PyTorch's eval-mode BN in float64, rounded once."""
    mean, var = _t64(mean), _t64(var)
    w = weight.detach().to(torch.float64) if weight is not None else None
    b = bias.detach().to(torch.float64) if bias is not None else None
    return F.batch_norm(x.detach().to(torch.float64), mean, var, w, b, False, 0.0, eps).to(x.dtype)


# --- backward: local sums ---------------------------------------------------------------

def _tensor64(v):
    """v (numpy or tensor, (C,)) as a float64 tensor; a float64 tensor as it is."""
    if isinstance(v, torch.Tensor) and v.dtype == torch.float64:
        return v
    return torch.from_numpy(np.ascontiguousarray(_f64(v)))


def backward_sums(dy, x, mean, var, eps):
    """float64 numpy (2, C), rows Σdy and Σdy·x̂ over this rank's elements,
    x̂ = (x − mean)·invstd: ATen's eval-mode BN backward on float64 copies (one
    fused pass, float64 products and sums; x in float64 is exact, so the sums are
    float64-exact)."""
    dy64 = _scratch_like("b", dy.shape, torch.float64).copy_(dy)  # (N, C, *)
    x64 = _scratch_like("a", x.shape, torch.float64).copy_(x.detach())  # (N, C, *)
    _, s2, s1 = torch.ops.aten.native_batch_norm_backward(dy64, x64, None, _tensor64(mean), _tensor64(var), None, None, False, eps, [False, True, True])
    return np.concatenate((s1.numpy(), s2.numpy())).reshape(2, -1)


def backward_sums_naive(dy, x, mean, var, eps):
    """Twin: x̂ in float64, then two float64 sums."""
    mean, var = _t64(mean), _t64(var)
    dims = _dims(x)
    dy64 = dy.to(torch.float64)
    xhat = F.batch_norm(x.detach().to(torch.float64), mean, var, None, None, False, 0.0, eps)
    return dy64.sum(dims), (dy64 * xhat).sum(dims)


# --- backward: dx with the group's sums --------------------------------------------------

def input_grad(dy, x, mean, var, weight, eps, s1, s2, n, co=None):
    """dx = γ·invstd·(dy − S1/n − x̂·S2/n) in dy's dtype with the group's sums and
    count n > 0, as dy·a + xc·k + c (xc = x − m_hi): a = γ·invstd,
    k = −a·invstd·S2/n, c = −a·S1/n − k·m_lo. `co`: the forward's
    coefficients(x, mean, var, weight, eps) if kept."""
    hi, lo, invstd, a = co or coefficients(x, mean, var, weight, eps)
    k = -a * invstd * _f64(s2) / n
    c = -a * _f64(s1) / n - k * lo
    hi_t, a_t, k_t, c_t = _coefs(np.concatenate((hi, a, k, c)).reshape(4, -1), dy)
    xc = torch.sub(x.detach(), hi_t, out=_scratch_like("a", x.shape, x.dtype))  # (N, C, *)
    # c + dy·a, then + xc·k: fused multiply-adds, filled and in place as in normalize.
    return torch.empty_like(dy).copy_(c_t.expand_as(dy)).addcmul_(dy, a_t).addcmul_(xc, k_t)


def input_grad_naive(dy, x, mean, var, weight, eps, s1, s2, n):
    """Twin: in float64, rounded once."""
    mean, var, s1, s2 = _t64(mean), _t64(var), _t64(s1), _t64(s2)
    invstd = (var + eps).rsqrt()
    scale = invstd if weight is None else invstd * weight.detach().to(torch.float64)
    xhat = F.batch_norm(x.detach().to(torch.float64), mean, var, None, None, False, 0.0, eps)
    dx = dy.to(torch.float64) - _bcast(s1 / n, x) - xhat * _bcast(s2 / n, x)
    return (dx * _bcast(scale, x)).to(dy.dtype)
