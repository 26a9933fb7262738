#!/usr/bin/env python3
"""A PyTorch training script on syncbn's coordinator: a CIFAR-style ResNet
(written here, no torchvision) with BatchNorm2d, its BN layers converted to
syncbn.torch.SyncBatchNorm, trained data-parallel on synthetic 3×32×32 images
(or IDX files: --data DIR with train-images-idx3-ubyte / train-labels-idx1-ubyte).

    syncbn launch --workers 4 -- /usr/bin/python3 examples/train_resnet.py
    syncbn launch --workers 4 --norm local -- /usr/bin/python3 examples/train_resnet.py --batch 2

Every rank builds the same model, takes its slice of each global batch, and
after backward averages the gradients with all_reduce_gradients. Prints the
loss and ms/step from rank 0; --json prints one summary line for bench/."""

import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import syncbn.torch as sbt


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (He et al. 2016, §4.2): n blocks per stage, 16/32/64 channels."""

    def __init__(self, n=1, channels=3, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


def load_data(args, global_batch):
    if args.data == "synthetic":
        # Ten classes, each a fixed random pattern plus noise: learnable in a few hundred steps.
        g = torch.Generator().manual_seed(args.seed)
        n = max(global_batch * args.steps, 512)
        labels = torch.randint(0, 10, (n,), generator=g)
        patterns = torch.randn(10, 3, 32, 32, generator=g)
        images = patterns[labels] + 1.5 * torch.randn(n, 3, 32, 32, generator=g)
        return images, labels
    names = sorted(os.listdir(args.data))
    img = next(os.path.join(args.data, f) for f in names if "train-images" in f)
    lab = next(os.path.join(args.data, f) for f in names if "train-labels" in f)
    images = read_idx(img).float().div_(255)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = F.pad(images, [(32 - images.shape[-1]) // 2] * 4) if images.shape[-1] < 32 else images
    return (images - images.mean()) / images.std(), read_idx(lab).long()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--blocks", type=int, default=1, help="blocks per stage (1: ResNet-8, 3: ResNet-20)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default="synthetic", help="synthetic, or a folder of IDX files")
    p.add_argument("--every", type=int, default=10, help="print every N steps")
    p.add_argument("--json", action="store_true", help="print one JSON summary line (rank 0)")
    args = p.parse_args()

    group = sbt.init_process_group()
    rank, world = group.rank, group.world_size
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    images, labels = load_data(args, world * args.batch)
    model = sbt.convert_sync_batchnorm(ResNet(args.blocks, channels=images.shape[1]))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    times, losses = [], []
    t_prev = time.perf_counter()
    for step in range(args.steps):
        at = (step * world * args.batch) % (len(images) - world * args.batch + 1)
        lo = at + rank * args.batch  # this rank's slice of the global batch
        x, y = images[lo : lo + args.batch], labels[lo : lo + args.batch]
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        sbt.all_reduce_gradients(model, loss=loss.item(), batch_size=args.batch)
        opt.step()
        now = time.perf_counter()
        times.append((now - t_prev) * 1000)
        t_prev = now
        losses.append(loss.item())
        if rank == 0 and not args.json and ((step + 1) % args.every == 0 or step + 1 == args.steps):
            print(f"step {step + 1}/{args.steps}  loss {sum(losses[-args.every:]) / len(losses[-args.every:]):.4f}  {sorted(times[-args.every:])[len(times[-args.every:]) // 2]:.1f} ms/step")
    model.eval()
    with torch.no_grad():
        held = images[-256:], labels[-256:]
        accuracy = (model(held[0]).argmax(1) == held[1]).float().mean().item()
    if rank == 0:
        steady = sorted(times[5:]) if len(times) > 5 else sorted(times)
        summary = {"norm": group.norm, "workers": world, "batch": args.batch, "steps": args.steps, "msPerStep": steady[len(steady) // 2], "finalLoss": losses[-1], "accuracy": accuracy}
        print(json.dumps(summary) if args.json else f"done: {args.steps} steps, {summary['msPerStep']:.1f} ms/step (median), last loss {losses[-1]:.4f}, accuracy {accuracy:.3f} on the last 256 samples (eval mode)")


if __name__ == "__main__":
    main()
