#!/usr/bin/env python3
"""PyTorch reference for `--model resnet:N` (run by hand; needs PyTorch).

Writes test/fixtures/graph/resnet-reference.json: for resnet:1 and resnet:3 the
state_dict names and shapes of the module below (docs/models.md's definition), and
for resnet:1 on a 3×9×7 batch one float64 training-mode forward and backward:
weights from a formula both sides compute (w_i = 0.5·sin(i·φ + k)/√fan_in with
k the tensor's index), logits, and per tensor Σ g_i·cos(i) and Σ g_i² of the
gradient of L = Σ logits·cos(j), plus the running statistics after the step.
Not a training script: one step, no optimizer.
"""
import json
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


# --- the definition docs/models.md shows ---------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):  # --model resnet:N; resnet:3 = ResNet-20
    def __init__(self, n, in_channels=1, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, cout in enumerate([16, 32, 64]):
            blocks = [BasicBlock(cin if b == 0 else cout, cout, 2 if b == 0 and stage > 0 else 1) for b in range(n)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
# --------------------------------------------------------------------------------

PHI = 0.6180339887498949


def formula(numel, k, fan_in):
    i = torch.arange(numel, dtype=torch.float64)
    return (0.5 * torch.sin(i * PHI + k) / math.sqrt(fan_in)).float().double()


def main(out):
    torch.set_default_dtype(torch.float64)
    ref = {"about": __doc__.strip().splitlines()[0], "models": {}}
    for n in (1, 3):
        m = ResNet(n, in_channels=3)
        ref["models"][f"resnet:{n}"] = [[k, list(v.shape)] for k, v in m.state_dict().items()]

    m = ResNet(1, in_channels=3).double().train()
    params = dict(m.named_parameters())
    with torch.no_grad():
        for k, (name, p) in enumerate(params.items()):
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(formula(p.numel(), k, fan_in).reshape(p.shape))
    n, shape = 3, (3, 9, 7)
    x = formula(n * 3 * 9 * 7, 100, 1.0 / 16).reshape(n, *shape)
    logits = m(x)
    probe = torch.cos(torch.arange(logits.numel(), dtype=torch.float64)).reshape(logits.shape)
    (logits * probe).sum().backward()
    grads = {}
    for name, p in params.items():
        g = p.grad.flatten()
        cos = torch.cos(torch.arange(g.numel(), dtype=torch.float64))
        grads[name] = [float((g * cos).sum()), float((g * g).sum())]
    buffers = {k: v.flatten().tolist() for k, v in m.state_dict().items() if "running" in k and k.startswith(("bn1", "layer2.0.downsample.1"))}
    ref["step"] = {
        "inShape": list(shape), "n": n, "phi": PHI,
        "x": x.flatten().tolist(), "logits": logits.flatten().tolist(),
        "grads": grads, "buffers": buffers,
    }
    with open(out, "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/graph/resnet-reference.json")
