"""PyTorch on the syncbn coordinator: init_process_group() from the environment
`syncbn launch` sets, SyncBatchNorm (statistics of the whole batch over the
ranks of a statistics group, forward and backward, as DESIGN.md §3), its
converter, and the gradient all-reduce. CPU tensors; the model, data and
kernels stay PyTorch's. Not a launcher: `syncbn launch` starts the processes."""

import atexit
import os
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import bn_kernels, wire
from .wire import SyncbnError

__all__ = [
    "init_process_group",
    "destroy_process_group",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "convert_sync_batchnorm",
    "SyncBatchNorm",
    "all_reduce_gradients",
    "broadcast_parameters",
    "DistributedDataParallel",
    "SyncbnError",
]

# Phase order within a step (shared/protocol.ts compareRounds).
_PHASE_ORDER = {"fwd": 0, "bwd": 1, "grad": 2, "sum": 3}
# `layer` ids of this client's sum rounds (any id works; these stay clear of the TS workers' 0..2).
_SUM_BROADCAST = 0
_SUM_LAYER_CHECK = 16
# Parameter checksums ride on the first gradient round and every this many after.
_CHECKSUM_EVERY = 50

_group = None
# SyncBatchNorm layers of this process in construction order: their index is the round's `layer`.
_layer_count = 0
_all_layers = []


def _key(step, phase, layer):
    return (step, _PHASE_ORDER[phase], -layer if phase == "bwd" else layer)


class ProcessGroup:
    """This process's place in the run: rank, world, norm mode, and the round clock.

    Every round carries (step, phase, layer), and each rank's rounds must come in
    the order of compareRounds (DESIGN.md §2.3). A PyTorch script has no step
    counter we can see, so the clock derives one: a round that would not come
    after the previous one starts the next step. Ranks running the same program
    derive the same steps."""

    def __init__(self, client, rank, world_size, norm, group_size, conventions):
        self.client = client
        self.rank = rank
        self.world_size = world_size
        self.norm = norm
        self.group_size = group_size
        self.conventions = conventions
        self.step = 0
        self.last = None
        self.layers_checked = False
        self.grad_rounds = 0
        self._compute_since = time.perf_counter()
        self._wait_at_last_grad = 0.0

    @property
    def bn_rounds(self):
        return self.norm != "local"

    def round(self, phase, layer, count, data, f32=False, extra=None, checksum=None):
        step = self.step
        if self.last is not None and _key(step, phase, layer) <= self.last:
            step += 1
        self.step, self.last = step, _key(step, phase, layer)
        return self.client.round(step, phase, layer, count, data, f32, extra, checksum)

    def round_f64(self, phase, layer, count, values):
        """A round of float64 values (a 1-D tensor): returns (count, float64 tensor)."""
        data = values.detach().to(torch.float64).contiguous().numpy()
        r = self.round(phase, layer, count, data)
        return r.count, torch.frombuffer(r.data, dtype=torch.float64) if len(r.data) else torch.zeros(0, dtype=torch.float64)

    def round_np(self, phase, layer, count, values):
        """A round of a float64 numpy vector: returns (count, float64 numpy vector over the result's own buffer)."""
        r = self.round(phase, layer, count, values)
        return r.count, np.frombuffer(r.data, dtype=np.float64)

    def allgather_pairs(self, a, b):
        """Every rank's (a, b) integers, through one sum round (each rank fills its own slots)."""
        v = torch.zeros(2 * self.world_size, dtype=torch.float64)
        v[2 * self.rank] = a
        v[2 * self.rank + 1] = b
        _, got = self.round_f64("sum", _SUM_LAYER_CHECK, 1, v)
        return [(int(got[2 * r]), int(got[2 * r + 1])) for r in range(self.world_size)]


def _env_int(env, name):
    v = env.get(name, "")
    try:
        n = int(v)
    except ValueError:
        return None
    return n if n >= 0 else None


def _parse_norm(norm, world_size):
    """Group size of the mode (1 for local), or SystemExit for a mode this client cannot run."""
    if norm == "sync":
        return world_size
    if norm == "local":
        return 1
    if norm.startswith("group:"):
        try:
            k = int(norm[6:])
        except ValueError:
            k = 0
        if k < 1 or world_size % k:
            raise SystemExit(f"syncbn.torch: SYNCBN_NORM={norm}: group:K needs a positive K dividing WORLD_SIZE={world_size}")
        return k
    raise SystemExit(f"syncbn.torch: SYNCBN_NORM={norm} is not a mode of syncbn.torch (sync, local, group:K); ghost BN, batch renorm and GroupNorm are the model's own layers in PyTorch")


def init_process_group(conventions=None, env=None):
    """Joins the run described by the environment (`syncbn launch` sets it):
    RANK, WORLD_SIZE, SYNCBN_COORDINATOR (tcp://HOST:PORT), SYNCBN_TOKEN, and
    optionally SYNCBN_NORM (sync), SYNCBN_TRAINING, SYNCBN_ROUND_TIMEOUT_MS,
    SYNCBN_CONNECT_TIMEOUT_MS. Without them: SystemExit with one line.
    `conventions` overrides the hello's BN conventions (eps, momentum,
    momentumStyle, unbiasedRunningVar): PyTorch's by default."""
    global _group
    if _group is not None:
        return _group
    env = os.environ if env is None else env
    rank, world, url = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), env.get("SYNCBN_COORDINATOR", "")
    missing = [n for n, v in (("RANK", rank), ("WORLD_SIZE", world), ("SYNCBN_COORDINATOR", url or None)) if v is None]
    if missing:
        raise SystemExit(
            f"syncbn.torch.init_process_group: {', '.join(missing)} not set; run the script under "
            "`syncbn launch --workers W -- python3 SCRIPT`, or set RANK, WORLD_SIZE, SYNCBN_COORDINATOR (tcp://HOST:PORT) and SYNCBN_TOKEN by hand"
        )
    if world < 1 or rank >= world:
        raise SystemExit(f"syncbn.torch.init_process_group: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    norm = env.get("SYNCBN_NORM", "sync") or "sync"
    group_size = _parse_norm(norm, world)
    conv = {"eps": 1e-5, "momentum": 0.1, "momentumStyle": "torch", "unbiasedRunningVar": True}
    conv.update(conventions or {})
    conv["norm"] = norm
    conv["training"] = env.get("SYNCBN_TRAINING", "")
    round_timeout_s = (_env_int(env, "SYNCBN_ROUND_TIMEOUT_MS") or 60000) / 1000 + 5
    connect_timeout_s = (_env_int(env, "SYNCBN_CONNECT_TIMEOUT_MS") or 60000) / 1000
    _install_exit_hooks()
    client = wire.Client.connect(url, rank, world, env.get("SYNCBN_TOKEN", ""), conv, connect_timeout_s, round_timeout_s)
    _group = ProcessGroup(client, rank, world, norm, group_size, conv)
    return _group


_failed = False


def _install_exit_hooks():
    """Bye on a normal exit (the coordinator then knows this rank finished); an
    uncaught SyncbnError prints as one line, not a traceback."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        global _failed
        _failed = True
        if isinstance(value, SyncbnError):
            print(f"syncbn: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
    atexit.register(lambda: destroy_process_group() if not _failed else _group and _group.client.close())


def destroy_process_group():
    """Says bye (this rank finished normally) and closes the connection."""
    global _group
    if _group is not None:
        _group.client.bye()
        _group = None


def is_initialized():
    return _group is not None


def get_rank():
    return _group.rank if _group else 0


def get_world_size():
    return _group.world_size if _group else 1


def _require_group(what):
    if _group is None:
        raise RuntimeError(f"syncbn.torch.{what} needs syncbn.torch.init_process_group() first (run the script under `syncbn launch`)")
    return _group


class _SyncBatchNormFunction(torch.autograd.Function):
    """Sync BN of DESIGN.md §3: local float64 moments, one fwd round (Chan merge
    in rank order), normalize; backward: local Σdy, Σdy·x̂, one bwd round, dx.
    A rank with no samples sends zeros and still joins both rounds. The local
    arithmetic is bn_kernels' (fast forms; their naive float64 twins are beside them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn, group):
        c = x.shape[1]
        n_local = x.numel() // c if c else 0
        # (mean, M2) rows, flattened to the payload's order.
        payload = bn_kernels.local_moments(x).reshape(-1) if n_local > 0 else np.zeros(2 * c)
        count, reduced = group.round_np("fwd", bn.layer_index, n_local, payload)
        mean, var = reduced[:c], reduced[c:]  # global mean, biased var (§3.2): views of this round's result
        mean_t, var_t = torch.from_numpy(mean), torch.from_numpy(var)
        # Straight into the instance dict: nn.Module.__setattr__ costs more than the rest of this bookkeeping.
        vars(bn).update(batch_count=count, batch_mean=mean_t, batch_var=var_t)
        ctx.bn_layer, ctx.group, ctx.count, ctx.n_local = bn.layer_index, group, count, n_local
        ctx.save_for_backward(x)
        ctx.mean, ctx.var, ctx.eps, ctx.affine = mean_t, var_t, bn.eps, weight is not None
        ctx.param_dtype = weight.dtype if weight is not None else None
        ctx.co = None
        if count == 0:
            return x.clone()
        bn.update_running_stats(count, mean, var)
        if n_local == 0:
            return x.clone()
        # m_hi, m_lo, invstd, γ·invstd: computed once, for y here and for dx in backward.
        ctx.co = bn_kernels.coefficients(x, mean, var, weight, bn.eps)
        return bn_kernels.normalize(x, mean, var, weight, bias, bn.eps, ctx.co)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        c = x.shape[1]
        # (Σdy, Σdy·x̂) rows, flattened to the payload's order.
        payload = bn_kernels.backward_sums(dy, x, ctx.mean, ctx.var, ctx.eps).reshape(-1) if ctx.n_local > 0 else np.zeros(2 * c)
        _, sums = ctx.group.round_np("bwd", ctx.bn_layer, ctx.n_local, payload)
        n = ctx.count
        if not ctx.needs_input_grad[0]:
            dx = None  # the round above still had to happen: every rank joins it
        elif n > 0 and ctx.n_local > 0:
            # γ rides in ctx.co (the forward's coefficients), so it need not be saved.
            dx = bn_kernels.input_grad(dy, x, ctx.mean, ctx.var, None, ctx.eps, sums[:c], sums[c:], n, ctx.co)
        else:
            dx = torch.zeros_like(x)
        if not ctx.affine:
            return dx, None, None, None, None
        # This rank's shares of dγ = Σdy·x̂ and dβ = Σdy; the gradient round adds the shares.
        d_beta, d_gamma = bn_kernels.as_dtype(payload.reshape(2, c), ctx.param_dtype).unbind(0)
        return dx, d_gamma, d_beta, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d/3d whose training statistics are those of the whole batch
    over the ranks of its statistics group (`--norm sync`: all ranks; `group:K`:
    K consecutive ranks; `local`: this rank, PyTorch's own kernel). The same
    parameters, buffers and state_dict names as nn.BatchNorm*d. Eval mode uses
    the running statistics and never communicates. Without init_process_group()
    it is plain BN, as PyTorch's SyncBatchNorm with one process.

    momentum_style ("torch" | "keras") and unbiased_running_var follow DESIGN.md
    §3.4; PyTorch's modules are torch / True (the defaults)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None, dtype=None, momentum_style="torch", unbiased_running_var=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        global _layer_count
        self.layer_index = _layer_count
        _layer_count += 1
        _all_layers.append(self)
        self.momentum_style = momentum_style
        self.unbiased_running_var = unbiased_running_var
        # Set by convert_sync_batchnorm: the module's qualified name, for error messages.
        self.qualified_name = ""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D input")

    def _factor(self):
        """The weight f of the new batch value in this update (§3.4); counts the update."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return 1.0 - self.momentum if self.momentum_style == "keras" else self.momentum

    def update_running_stats(self, count, mean, var):
        """Running statistics from the group's (n, mean, biased var), in float64."""
        running_mean, running_var = self.running_mean, self.running_var
        if not self.track_running_stats or running_mean is None:
            return
        f = self._factor()
        scale = count / (count - 1) if self.unbiased_running_var and count > 1 else 1.0
        mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
        rm, rv = _numpy_view(running_mean), _numpy_view(running_var)
        # The operations of shared/stats.ts updateRunningStats, in its order: float64 buffers get its bits.
        # numpy's float64 operations are torch's (IEEE, one rounding each) at a fraction of a torch op's cost on (C,).
        new_mean = rm.astype(np.float64, copy=False) * (1 - f) + mean * f
        new_var = rv.astype(np.float64, copy=False) * (1 - f) + var * f * scale
        _store(running_mean, rm, new_mean)
        _store(running_var, rv, new_var)

    def _plain(self, x, training):
        f = 0.0
        if training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        use_batch = training or self.running_mean is None
        return F.batch_norm(x, self.running_mean if not training or self.track_running_stats else None, self.running_var if not training or self.track_running_stats else None, self.weight, self.bias, use_batch, f, self.eps)

    def forward(self, x):
        self._check_input_dim(x)
        group = _group
        if not self.training:
            return self._plain(x, False)
        if group is not None and not group.layers_checked:
            _check_layers(group)
        torch_style = self.momentum_style == "torch" and self.unbiased_running_var
        if group is None or (not group.bn_rounds and torch_style):
            return self._plain(x, True)
        if not group.bn_rounds:
            raise RuntimeError("syncbn.torch.SyncBatchNorm: keras momentum or a biased running variance needs --norm sync or group:K")
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self, group)




# Buffer dtypes numpy can view, rounding float64 into them as torch's copy_ does (a C cast, to nearest).
_NP_BUFFER = {torch.float64, torch.float32}


def _numpy_view(t):
    """A buffer as numpy: a view of it for float64/float32, else a float64 copy."""
    return t.numpy(force=True) if t.dtype in _NP_BUFFER else t.detach().to(torch.float64).numpy()


def _store(t, view, v):
    """Writes float64 numpy v into buffer t (`view`: _numpy_view(t)), rounded to t's dtype."""
    if t.dtype in _NP_BUFFER:
        view[...] = v
    else:
        t.copy_(torch.from_numpy(v))


def _check_layers(group):
    """Once, at the first training forward: every rank must have the same
    SyncBatchNorm layers (names, channels), or the rounds would pair up the wrong
    layers. One sum round gathers each rank's count and fingerprint."""
    group.layers_checked = True
    layers = sorted(_all_layers, key=lambda b: b.layer_index)
    if layers and layers[-1].layer_index < 4096:
        names = [""] * (layers[-1].layer_index + 1)
        for b in layers:
            names[b.layer_index] = b.qualified_name or ""
        group.client.name_layers(names)
    text = ";".join(f"{b.layer_index}:{b.qualified_name}:{b.num_features}" for b in layers)
    mine = (len(layers), zlib.crc32(text.encode()))
    got = group.allgather_pairs(*mine)
    if all(g == got[0] for g in got):
        return
    by_print = {}
    for r, g in enumerate(got):
        by_print.setdefault(g, []).append(r)
    common = max(by_print.values(), key=len)
    odd = [r for r in range(group.world_size) if r not in common]
    if group.rank not in odd:
        # The odd ranks stop; the rest go on to their next round, where the coordinator tells them which rank left.
        return
    desc = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {g[0]} layers (fingerprint {g[1]:08x})" for g, rs in by_print.items())
    listing = ", ".join(f"{b.qualified_name or '?'} ({b.num_features} channels)" for b in layers)
    raise SyncbnError(
        "SYNCBN_ERR_SHAPE",
        f"[rank {', '.join(map(str, odd))}] the ranks' BatchNorm layers differ ({desc}); this rank ({group.rank}) has {listing or 'none'}; every rank must build the same model",
        rank=odd,
    )


def convert_sync_batchnorm(module):
    """Replaces every BatchNorm1d/2d/3d (and SyncBatchNorm of torch.nn) in `module`
    by syncbn.torch.SyncBatchNorm, keeping weights, buffers, eps, momentum
    (None too), affine, track_running_stats, training mode and the state_dict
    names. Returns the converted module (the same object unless `module` itself
    is a BatchNorm)."""
    return _convert(module, "")


def _convert(module, name):
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        p = next(iter(module.parameters()), None)
        b = next(iter(module.buffers()), None)
        ref = p if p is not None else b
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None)
        with torch.no_grad():
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    if isinstance(out, SyncBatchNorm):
        out.qualified_name = name
    for child_name, child in module.named_children():
        out.add_module(child_name, _convert(child, f"{name}.{child_name}" if name else child_name))
    return out


def _grad_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def all_reduce_gradients(model, loss=None, batch_size=None):
    """Averages every parameter's gradient over all ranks: one gradient round,
    float32 summed by the coordinator in float64 in rank order, then ÷ W, so every
    rank holds the same bits. A missing gradient counts as zeros. `loss` (this
    rank's mean loss) and `batch_size` only feed the dashboard's loss chart."""
    group = _require_group("all_reduce_gradients")
    params = _grad_params(model)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(torch.float32) for p in params]) if params else torch.zeros(0)
    now = time.perf_counter()
    wait = group.client.wait_s - group._wait_at_last_grad
    compute = (now - group._compute_since) - wait
    b = batch_size if batch_size is not None else 1
    loss_value = float(loss) if loss is not None else 0.0
    # GradExtra (shared/protocol.ts): loss sum, correct, count, sync wait ms, compute ms, total steps, steps per epoch,
    # learning rate (0: the script's optimizer holds it, not us).
    extra = torch.tensor([loss_value * b, 0.0, float(b), wait * 1000, compute * 1000, 0.0, 0.0, 0.0], dtype=torch.float64)
    checksum = None
    if group.grad_rounds % _CHECKSUM_EVERY == 0:
        with torch.no_grad():
            checksum = float(sum(p.detach().to(torch.float64).sum() for p in model.parameters())) if params else 0.0
    group.grad_rounds += 1
    r = group.round("grad", -1, b, flat.contiguous().numpy(), f32=True, extra=extra.numpy(), checksum=checksum)
    group._wait_at_last_grad = group.client.wait_s
    group._compute_since = time.perf_counter()
    total = torch.frombuffer(r.data, dtype=torch.float32) if len(r.data) else torch.zeros(0)
    avg = total / group.world_size
    at = 0
    for p in params:
        k = p.numel()
        g = avg[at : at + k].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        at += k


@torch.no_grad()
def broadcast_parameters(model):
    """Gives every rank rank 0's parameters and floating buffers (one sum round:
    rank 0 sends its values, the others zeros), as DDP does at construction."""
    group = _require_group("broadcast_parameters")
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    if group.rank != 0:
        flat.zero_()
    _, got = group.round_f64("sum", _SUM_BROADCAST, 1, flat)
    at = 0
    for t in tensors:
        k = t.numel()
        t.copy_(got[at : at + k].view_as(t))
        at += k


class DistributedDataParallel(nn.Module):
    """A thin DDP-style wrapper: rank 0's weights to every rank at construction,
    forward as the module's, and `all_reduce_gradients()` after backward. The
    wrapped module stays at `.module` (state_dict names get the usual prefix)."""

    def __init__(self, module, broadcast=True):
        super().__init__()
        self.module = module
        if broadcast:
            broadcast_parameters(module)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def all_reduce_gradients(self, loss=None, batch_size=None):
        all_reduce_gradients(self.module, loss, batch_size)
