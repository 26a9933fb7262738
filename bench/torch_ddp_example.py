#!/usr/bin/env python3
# PyTorch's own way to run examples/train_resnet.py's training, for
# bench/torch-launch.ts to compare with `syncbn launch`: the example's ResNet,
# data, slicing and optimizer, in W processes under DistributedDataParallel over
# gloo on 127.0.0.1, every BatchNorm2d replaced by bench/torch_resnet.py's CPU
# sync BN (PyTorch 1.13's nn.SyncBatchNorm refuses CPU tensors) for --norm sync,
# or left as it is for --norm local. Threads per process as `syncbn launch` sets
# them (cores ÷ W, at least 1). Timed as the example times itself: rank 0's wall
# time per step, median after the first 5 steps. Prints one JSON line. Not a test.
# Usage: python3 bench/torch_ddp_example.py --norm sync|local [--workers 4] [--batch 8] [--steps 40] [--blocks 3]

import argparse
import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_resnet import SyncBN  # noqa: E402


def to_sync_bn(module):
    """Every BatchNorm2d of `module` replaced by SyncBN with the same parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = SyncBN(child.num_features, child.eps, child.momentum)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            to_sync_bn(child)
    return module


def worker(rank, args, port, q):
    # The example imports syncbn.torch at the top; it is on the path for that import only and never initialized here.
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    from train_resnet import ResNet, load_data
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    world = args.workers
    torch.manual_seed(args.seed)
    images, labels = load_data(argparse.Namespace(data="synthetic", seed=args.seed, steps=args.steps), world * args.batch)
    model = ResNet(args.blocks, channels=images.shape[1])
    if args.norm == "sync":
        to_sync_bn(model)
    model = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    times, losses = [], []
    t_prev = time.perf_counter()
    for step in range(args.steps):
        at = (step * world * args.batch) % (len(images) - world * args.batch + 1)
        lo = at + rank * args.batch
        x, y = images[lo : lo + args.batch], labels[lo : lo + args.batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        now = time.perf_counter()
        times.append((now - t_prev) * 1000)
        t_prev = now
    if rank == 0:
        steady = sorted(times[5:]) if len(times) > 5 else sorted(times)
        q.put({"norm": args.norm, "workers": world, "batch": args.batch, "steps": args.steps, "blocks": args.blocks,
               "threads": torch.get_num_threads(), "msPerStep": steady[len(steady) // 2], "finalLoss": losses[-1]})
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--norm", choices=["sync", "local"], required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, port, q)) for r in range(args.workers)]
    for proc in procs:
        proc.start()
    res = q.get(timeout=900)
    for proc in procs:
        proc.join(timeout=15)
    # A rank can hang in gloo's teardown after its last step (seen once in 12 runs, 6 Dec 2026): the timing is in, stop it.
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
