#!/usr/bin/env python3
"""ONNX fixtures for test/onnx.test.ts: models a user might bring, exported with
exactly docs/models.md's torch.onnx.export line, plus the weights PyTorch reaches
after k SGD steps in float64 (sync: one global batch; local: per-rank BN), from
the same data and training loop as scripts/make-torch-fixtures.py (imported).

Run by hand with PyTorch 1.13:  /usr/bin/python3 scripts/make-onnx-fixtures.py
Not a test: it only writes test/fixtures/onnx/.
"""

import copy
import importlib.util
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tf", os.path.join(HERE, "make-torch-fixtures.py"))
tf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf)
OUT = os.path.join(HERE, "..", "test", "fixtures", "onnx")


class ResProj(nn.Module):
    """One residual block with a 1x1 projection shortcut; x.mean((2,3)) pooling."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.proj = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(x)))))
        x = F.relu(y + self.proj(x))
        return self.fc(x.mean((2, 3)))


class Mlp(nn.Module):
    """BatchNorm1d and x.view(n, -1)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn1, self.fc2 = nn.Linear(784, 32), nn.BatchNorm1d(32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.bn1(self.fc1(x.view(x.shape[0], -1)))))


class Vgg(nn.Module):
    """conv-BN-ReLU-F.avg_pool2d twice, then a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.avg_pool2d(self.features[0:3](x), 2)
        x = F.avg_pool2d(self.features[3:6](x), 2)
        return self.classifier(x.view(x.size(0), -1))


def export(model, path):
    """docs/models.md's line, on a float32 copy (the exporting forward pass updates the copy's running stats)."""
    C, H, W = 1, 28, 28
    model = copy.deepcopy(model).float()
    model.train()
    torch.onnx.export(copy.deepcopy(model), torch.randn(2, C, H, W, dtype=torch.float32), path,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})


def make(name, make_model, x, y):
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = make_model().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().double())
    export(model, os.path.join(out, "model.onnx"))
    meta = {"format": "pt", "made_by": "scripts/make-onnx-fixtures.py"}
    # PyTorch's state before the exporting forward pass: the tests --init it (the ONNX running stats hold one update).
    tf.save_safetensors(os.path.join(out, "init.safetensors"), tf.state_arrays(model), meta)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for norm in ("sync", "local"):
        model.load_state_dict(initial)
        tf.train(model, x, y, norm)
        tf.save_safetensors(os.path.join(out, f"expected-{norm}.safetensors"), tf.state_arrays(model), meta)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters -> {out}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    x, y = tf.make_data.__wrapped__(np.random.default_rng(12)) if hasattr(tf.make_data, "__wrapped__") else tf.make_data(np.random.default_rng(12))
    make("resproj", ResProj, x, y)
    make("mlp", Mlp, x, y)
    make("vgg", Vgg, x, y)
    make("resnet1", lambda: tf.ResNet(1), x, y)
