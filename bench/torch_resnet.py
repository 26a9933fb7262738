#!/usr/bin/env python3
# PyTorch's side of the resnet benchmark (bench/resnet.ts runs it): the same
# resnet:3 on 1×28×28 as syncbn's, timed three ways on CPU — one process × 32
# (samples/s), DDP 4 processes × 8 over gloo with a sync BN written the way
# PyTorch's SyncBatchNorm is against plain BN (ms/step, runs interleaved), and
# BN forward+backward on (32, 64, 16, 16) with one thread (elements/s).
# Not a test; prints progress on stderr and one JSON object on stdout.
# Usage: python3 bench/torch_resnet.py [--quick] [--part bn,single,ddp] [--steps N] [--repeats R]

import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


class SyncBNFunction(torch.autograd.Function):
    """CPU sync BN, as torch.nn.SyncBatchNorm: one all_reduce of per-channel
    [sum, sumsq, count] in forward, one of [sum_dy, sum_dy_xhat] in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        c = x.shape[1]
        dims = (0, 2, 3)
        count = torch.full((1,), float(x.numel() // c), dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])  # (2C + 1)
        dist.all_reduce(stats)
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)  # biased
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / max(n.item() - 1, 1))
        invstd = torch.rsqrt(var + eps)
        xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        ctx.save_for_backward(xhat, weight, invstd, n)
        return xhat * weight[None, :, None, None] + bias[None, :, None, None]

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, invstd, n = ctx.saved_tensors
        c = dy.shape[1]
        dims = (0, 2, 3)
        local = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])  # (2C)
        dbias, dweight = local[:c].clone(), local[c:].clone()  # this rank's share; DDP averages them
        dist.all_reduce(local)
        mean_dy, mean_dy_xhat = local[:c] / n, local[c:] / n
        dx = (dy - mean_dy[None, :, None, None] - xhat * mean_dy_xhat[None, :, None, None]) * (weight * invstd)[None, :, None, None]
        return dx, dweight, dbias, None, None, None, None


class SyncBN(nn.BatchNorm2d):
    def forward(self, x):
        if not self.training:
            return super().forward(x)
        return SyncBNFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, self.momentum)


def make_resnet(n, bn):
    """resnet:n exactly as docs/models.md's module, with bn(channels) for every BatchNorm2d."""

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = bn(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = bn(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, cin=1, classes=10):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False), bn(16)
            stages, c = [], 16
            for i, cout in enumerate([16, 32, 64]):
                stages.append(nn.Sequential(BasicBlock(c, cout, 1 if i == 0 else 2), *[BasicBlock(cout, cout, 1) for _ in range(n - 1)]))
                c = cout
            self.layer1, self.layer2, self.layer3 = stages
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def train_steps(model, opt, x, y, steps):
    """ms of each of `steps` SGD steps."""
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_single(steps, repeats):
    torch.set_num_threads(2)
    torch.manual_seed(1)
    model = make_resnet(3, nn.BatchNorm2d)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    train_steps(model, opt, x, y, 5)
    ms = []
    for _ in range(repeats):
        ms += train_steps(model, opt, x, y, steps)
    med = statistics.median(ms)
    return {"threads": 2, "batch": 32, "ms_per_step": med, "samples_per_s": 32 * 1000 / med}


def ddp_worker(rank, world, port, steps, repeats, q):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    models = {}
    for mode, bn in (("sync", SyncBN), ("local", nn.BatchNorm2d)):
        torch.manual_seed(1)
        m = DDP(make_resnet(3, bn))
        models[mode] = (m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    g = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)

    def timed(mode, k):
        m, opt = models[mode]
        dist.barrier()
        t0 = time.perf_counter()
        train_steps(m, opt, x, y, k)
        dist.barrier()  # every rank finished: the step time of the group
        return (time.perf_counter() - t0) * 1000 / k

    for mode in models:
        timed(mode, 3)
    res = {"sync": [], "local": []}
    chunk = 5
    for i in range(repeats):
        for mode in (("sync", "local") if i % 2 == 0 else ("local", "sync")):
            for _ in range(max(1, steps // chunk)):
                res[mode].append(timed(mode, chunk))
    if rank == 0:
        q.put(res)
    dist.destroy_process_group()


def bench_ddp(steps, repeats, world=4):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, world, port, steps, repeats, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = q.get(timeout=900)
    for p in procs:
        p.join(timeout=60)
    sync, local = statistics.median(res["sync"]), statistics.median(res["local"])
    return {"world": world, "batch": 8, "threads": 1, "sync_ms": sync, "local_ms": local, "sync_over_local": sync / local,
            "sync_samples": [round(v, 2) for v in res["sync"]], "local_samples": [round(v, 2) for v in res["local"]]}


def bench_bn(reps):
    torch.set_num_threads(1)
    shape = (32, 64, 16, 16)
    bn = nn.BatchNorm2d(64)
    x = torch.randn(*shape, requires_grad=True)
    dy = torch.randn(*shape)

    def call():
        y = bn(x)
        y.backward(dy)
        x.grad = None

    for _ in range(20):
        call()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(5):
            call()
        ms.append((time.perf_counter() - t0) * 1000 / 5)
    med = statistics.median(ms)
    n = 32 * 64 * 16 * 16
    return {"shape": list(shape), "threads": 1, "ms": med, "elements_per_s": n / (med / 1000)}


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main():
    quick = "--quick" in sys.argv
    parts = sys.argv[sys.argv.index("--part") + 1].split(",") if "--part" in sys.argv else ["bn", "single", "ddp"]
    steps, repeats = arg("--steps", 10 if quick else 20), arg("--repeats", 2 if quick else 4)
    out = {"torch": torch.__version__, "load": list(os.getloadavg())}
    t0 = time.time()
    if "bn" in parts:
        out["bn"] = bench_bn(20 if quick else 60)
        print(f"torch BN fwd+bwd: {out['bn']['elements_per_s'] / 1e6:.1f} M elements/s", file=sys.stderr)
    if "single" in parts:
        out["single"] = bench_single(steps, repeats)
        print(f"torch 1×32: {out['single']['samples_per_s']:.0f} samples/s", file=sys.stderr)
    if "ddp" in parts:
        out["ddp"] = bench_ddp(steps, repeats)
        print(f"torch DDP 4×8: sync {out['ddp']['sync_ms']:.1f} ms, local {out['ddp']['local_ms']:.1f} ms", file=sys.stderr)
    out["seconds"] = time.time() - t0
    out["load_end"] = list(os.getloadavg())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
