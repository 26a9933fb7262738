#!/usr/bin/env python3
"""Whole-run PyTorch fixtures at the sizes users train (test/whole-run.test.ts).

The models, data, safetensors writer and float64 training of
make-torch-fixtures.py, at realistic batch sizes and several steps: resnet:3 at
2 workers x 32 (global batch 64), resnet:2 at 1 x 64, cnn and mlp at 2 x 32, each
for 3 SGD steps, `sync` and `local`. A one-step or tiny-shape check proves a
gradient; these prove training (float32 sums over a batch that drift show up
only here). Run by hand: /usr/bin/python3 scripts/make-whole-run-fixtures.py
Not a test: it only writes test/fixtures/torch/runs/.
"""

import importlib.util
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fixtures", os.path.join(HERE, "make-torch-fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)


class Mlp(nn.Module):
    """syncbn's `mlp` (worker/nn/model.ts): flatten -> 256 -> BN -> ReLU -> 128 -> BN -> ReLU -> classes."""

    def __init__(self, classes=fx.CLASSES):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(784, 256), nn.BatchNorm1d(256, fx.BN_EPS, fx.BN_MOMENTUM)
        self.fc2, self.bn2 = nn.Linear(256, 128), nn.BatchNorm1d(128, fx.BN_EPS, fx.BN_MOMENTUM)
        self.fc3 = nn.Linear(128, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.fc1(x.flatten(1))))
        return self.fc3(torch.relu(self.bn2(self.fc2(x))))


# name, --model, the module, workers, batch, steps, data ("blocky": make-torch-fixtures.py's 64 images;
# "noise": 192 images of independent pixels).
RUNS = [
    ("resnet2-1x32", "resnet:2", lambda: fx.ResNet(2), 1, 32, 2, "blocky"),
    ("resnet3-1x32", "resnet:3", lambda: fx.ResNet(3), 1, 32, 2, "blocky"),
    ("resnet3-2x32", "resnet:3", lambda: fx.ResNet(3), 2, 32, 3, "noise"),
    ("resnet2-1x64", "resnet:2", lambda: fx.ResNet(2), 1, 64, 3, "noise"),
    ("cnn-2x32", "cnn", fx.Cnn, 2, 32, 3, "noise"),
    ("mlp-2x32", "mlp", Mlp, 2, 32, 3, "noise"),
]


def float32_distance(make, x, y):
    """PyTorch's own float32 training against its float64 one, per tensor as the test measures
    (max |a - b| / max |b|), worst tensor: the yardstick for runs where float32 rounding alone
    moves ReLU inputs across 0."""
    res = {}
    for dt in (torch.float64, torch.float32):
        torch.manual_seed(0)
        m = make().double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.float().double())
        m = m.to(dt)
        fx.train(m, x.to(dt), y, "sync")
        res[dt] = {k: v.double() for k, v in m.state_dict().items() if v.is_floating_point()}
    return max(((res[torch.float32][k] - v).abs().max() / v.abs().max()).item() for k, v in res[torch.float64].items())

def make_data(rng):
    """Images of independent uniform pixels, labels uniform in 0..9. Not the blocky images of
    make-torch-fixtures.py: a flat 4x4 block gives 16 equal activations, so one ReLU input within
    float32 rounding of 0 flips 16 gradients at once and the float64 reference stops being a
    yardstick for float32 training after a few steps."""
    os.makedirs(os.path.join(fx.ROOT, "data"), exist_ok=True)
    splits = {}
    for prefix, count in (("train", fx.TRAIN), ("t10k", fx.TEST)):
        images = rng.integers(0, 256, size=(count, fx.SIDE, fx.SIDE), dtype=np.uint8)
        labels = rng.integers(0, fx.CLASSES, size=count, dtype=np.uint8)
        fx.write_gz(os.path.join(fx.ROOT, "data", f"{prefix}-images-idx3-ubyte.gz"), fx.idx_bytes(0x803, [count, fx.SIDE, fx.SIDE], images))
        fx.write_gz(os.path.join(fx.ROOT, "data", f"{prefix}-labels-idx1-ubyte.gz"), fx.idx_bytes(0x801, [count], labels))
        splits[prefix] = (images, labels)
    images, labels = splits["train"]
    x = ((images.astype(np.float64) / 255 - fx.MEAN) / fx.STD).astype(np.float32).astype(np.float64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    root = os.path.join(fx.ROOT, "runs")
    fx.ROOT = root
    fx.TRAIN, fx.TEST = 192, 16
    data = {"noise": make_data(np.random.default_rng(21))}  # root/data: 192 training images
    fx.ROOT, fx.TRAIN = tempfile.mkdtemp(), 64
    data["blocky"] = fx.make_data(np.random.default_rng(12))  # the same files as test/fixtures/torch/data
    fx.ROOT = root
    for name, model, make, workers, batch, steps, kind in RUNS:
        x, y = data[kind]
        fx.TRAIN = len(y)
        fx.WORKERS, fx.BATCH, fx.STEPS = workers, batch, steps
        fx.check_order_is_pytorchs()
        fx.make_fixture(name, make, np.float32, False, x, y)
        path = os.path.join(root, name, "settings.json")
        with open(path) as f:
            settings = json.load(f)
        settings["model"] = model
        settings["data"] = "data" if kind == "noise" else "../data"
        settings["torchFloat32Distance"] = float32_distance(make, x, y)
        with open(path, "w") as f:
            json.dump(settings, f, indent=1)
