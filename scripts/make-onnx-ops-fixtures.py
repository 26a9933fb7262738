#!/usr/bin/env python3
"""PyTorch fixtures for the ONNX ops of issue 25 (test/onnx-ops.test.ts, test/onnx-ops-run.test.ts).

- test/fixtures/onnx-ops/pointwise.json: PyTorch's float64 y and dx = dL/dx (L = sum(y * dy))
  of every new activation at chosen points, the kinks included (their gradient conventions).
- test/fixtures/onnx/opsnet/, poolnet/ (padded max and average pools, Tanh) and actnet/ (GELU, Mish, ELU, PReLU): a small CNN built from the new ops (SiLU, depthwise and grouped
  conv, HardSwish, LeakyReLU, ReLU6, HardSigmoid, Concat, global average pool, a squeeze-excite
  broadcast Mul, Mul/Div/Sub/Add by constants, Flatten, view, Dropout), exported with the
  training-mode line of docs/models.md; init.safetensors; expected-{sync,local}.safetensors after
  STEPS of float64 SGD exactly as scripts/make-torch-fixtures.py trains (its data, its loop);
  settings.json (test/torch-train.ts reads it); and onestep.safetensors: the first global batch x, PyTorch's float64 logits and every
  parameter's gradient of the mean cross-entropy (grad.<name>).
- test/fixtures/onnx-ops/{shufflev2,mobilev2,samepad,efflike,resstem,incep}/: common CNN blocks, model.onnx and onestep.safetensors.
Dropout has p = 0.0 in the whole-run model: PyTorch's mask stream cannot be matched; syncbn's
dropout semantics are tested on their own (test/onnx-ops.test.ts).

Run by hand with PyTorch 1.13:  /usr/bin/python3 scripts/make-onnx-ops-fixtures.py [NAME …]
(names: only those whole-run fixtures, e.g. bnvarnet: BatchNorm affine=False and a module's own momentum)
Not a test: it only writes test/fixtures/onnx-ops/ and test/fixtures/onnx/{opsnet,poolnet}/ (and rewrites
test/fixtures/torch/data with the same bytes).
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tf = load("tf", "make-torch-fixtures.py")
of = load("of", "make-onnx-fixtures.py")
POINTWISE = os.path.join(HERE, "..", "test", "fixtures", "onnx-ops")
BN = lambda c: nn.BatchNorm2d(c, tf.BN_EPS, tf.BN_MOMENTUM)  # noqa: E731


class BnVarNet(nn.Module):
    """BatchNorm as users' models carry it: affine=False (2d and 1d: no weight or bias in the
    state_dict, fixed 1 and 0), a module's own momentum (0.01, exported as 0.99), momentum=None
    (a cumulative average, exported as 0 before the first update), and the default."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(6, tf.BN_EPS, tf.BN_MOMENTUM, affine=False)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8, tf.BN_EPS, 0.01)
        self.fc1 = nn.Linear(8, 12)
        self.bn3 = nn.BatchNorm1d(12, tf.BN_EPS, None, affine=False)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x):
        x = F.silu(self.bn1(self.conv1(x)))
        x = F.silu(self.bn2(self.conv2(x)))
        return self.fc2(F.silu(self.bn3(self.fc1(x.mean((2, 3))))))


class OpsNet(nn.Module):
    """Every op of issue 25 at least once; 1x28x28 in, 10 logits out."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), BN(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), BN(8)  # depthwise, 14x14
        self.pw, self.bn3 = nn.Conv2d(8, 12, 1, groups=4), BN(12)  # grouped 1x1 with bias
        self.branch = nn.Conv2d(8, 4, 3, padding=1, groups=2)  # grouped 3x3 with bias, no BN
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(16 + 4, 10)

    def forward(self, x):
        x = F.silu(self.bn1(self.conv1(x)))  # Sigmoid, Mul
        x = F.hardswish(self.bn2(self.dw(x)))  # HardSwish
        a = F.leaky_relu(self.bn3(self.pw(x)), 0.1)  # LeakyRelu (12, 14, 14)
        b = F.relu6(self.branch(x) * 3.0) / 4.0 - 0.5  # Relu + Clip (ReLU6), Mul, Div, Sub by constants
        b = b * F.hardsigmoid(b)  # HardSigmoid, Mul of activations (4, 14, 14)
        h = torch.cat([a, b], 1)  # Concat (16, 14, 14)
        s = torch.sigmoid(h.mean((2, 3)))  # ReduceMean keepdims=0, (16)
        h = h * s.view(s.size(0), -1, 1, 1)  # folded Reshape to (16, 1, 1), broadcast Mul
        h = h + torch.linspace(-0.5, 0.5, 16, dtype=h.dtype).view(1, 16, 1, 1)  # Add of a per-channel constant
        h = 1.0 - F.avg_pool2d(h, 2)  # AveragePool (16, 7, 7); Sub from a constant
        g = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)  # GlobalAveragePool (16, 1, 1), Flatten
        m = F.adaptive_avg_pool2d(b, 1)  # GlobalAveragePool of the branch (4, 1, 1)
        feat = torch.cat([g, m.view(m.size(0), -1)], 1)  # Reshape (x.view(n, -1)), Concat of vectors (20)
        return self.fc(self.drop(feat))


class PoolNet(nn.Module):
    """Padded pooling as exported: MaxPool pads (over tanh's negative values, so the border must be -inf),
    avg_pool2d counting the border (Pad + AveragePool) and not counting it (AveragePool pads); Tanh;
    a view whose size is shape arithmetic (Mul of folded dims); a conv squeeze-excite block."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1, bias=False), BN(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False), BN(6)
        self.se1, self.se2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(2 * 6 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.bn1(self.conv1(x))), 3, 2, 1)  # (6, 14, 14)
        x = self.bn2(self.conv2(x))
        # MobileNetV3's squeeze-excite: 1x1 convs on the (6, 1, 1) global pool, a broadcast Mul.
        x = x * F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        a = F.avg_pool2d(x, 3, 2, 1)  # count_include_pad=True (6, 7, 7)
        b = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        a = a.view(a.size(0), a.size(1) * a.size(2) * a.size(3))  # Shape, Gather, Mul folded to a flatten
        return self.fc(torch.cat([a, b.flatten(1)], 1))


# ---- one-batch models (test/fixtures/onnx-ops/<name>/: model.onnx, onestep.safetensors) ------------
# Small versions of common CNN blocks, as written in the wild (nn.Sequential, inplace, functional calls).
class InvRes(nn.Module):
    """MobileNetV2/V3 inverted residual: expand 1x1, depthwise kxk, optional squeeze-excite, project 1x1."""
    def __init__(self, cin, cout, stride, expand, k=3, act=nn.ReLU6, se=False):
        super().__init__()
        h = cin*expand
        self.use_res = stride==1 and cin==cout
        layers=[nn.Conv2d(cin,h,1,bias=False),BN(h),act(),nn.Conv2d(h,h,k,stride,k//2,groups=h,bias=False),BN(h),act()]
        self.pre=nn.Sequential(*layers)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, max(1,h//4),1), nn.SiLU(), nn.Conv2d(max(1,h//4),h,1), nn.Sigmoid()) if se else None
        self.post=nn.Sequential(nn.Conv2d(h,cout,1,bias=False),BN(cout))

    def forward(self,x):
        y=self.pre(x)
        if self.se is not None: y = y * self.se(y)
        y=self.post(y)
        return x+y if self.use_res else y


class MobileV2(nn.Module):
    """ReLU6 stem and inverted residuals; AdaptiveAvgPool2d((1, 1)), nn.Flatten, nn.Dropout head."""
    def __init__(self):
        super().__init__()
        self.stem=nn.Sequential(nn.Conv2d(1,8,3,2,1,bias=False),BN(8),nn.ReLU6(inplace=True))
        self.b1=InvRes(8,8,1,2); self.b2=InvRes(8,12,2,3); self.b3=InvRes(12,12,1,2)
        self.head=nn.Sequential(nn.AdaptiveAvgPool2d((1,1)),nn.Flatten(),nn.Dropout(0.0),nn.Linear(12,10))


    def forward(self,x): return self.head(self.b3(self.b2(self.b1(self.stem(x)))))


class EffLike(nn.Module):
    """EfficientNet-like: SiLU, 5x5 depthwise, SE with SiLU and Sigmoid, Hardswish; squeeze(-1) twice."""
    def __init__(self):
        super().__init__()
        self.stem=nn.Sequential(nn.Conv2d(1,8,3,2,1,bias=False),BN(8),nn.SiLU())
        self.b1=InvRes(8,8,1,2,k=5,act=nn.SiLU,se=True); self.b2=InvRes(8,16,2,2,k=3,act=nn.Hardswish,se=True)
        self.fc=nn.Linear(16,10); self.drop=nn.Dropout(p=0.0)

    def forward(self,x):
        x=self.b2(self.b1(self.stem(x)))
        x=F.adaptive_avg_pool2d(x,1).squeeze(-1).squeeze(-1)
        return self.fc(self.drop(x))


class ResStem(nn.Module):
    """torchvision ResNet stem: 7x7 stride-2 conv, MaxPool2d(3, 2, 1), a residual, AdaptiveAvgPool2d(1)."""
    def __init__(self):
        super().__init__()
        self.conv1=nn.Conv2d(1,8,7,2,3,bias=False); self.bn1=BN(8); self.mp=nn.MaxPool2d(3,2,1)
        self.c2=nn.Conv2d(8,8,3,1,1,bias=False); self.bn2=BN(8)
        self.avg=nn.AdaptiveAvgPool2d(1); self.fc=nn.Linear(8,10)

    def forward(self,x):
        x=self.mp(F.relu(self.bn1(self.conv1(x))))
        x=F.relu(x+self.bn2(self.c2(x)))
        return self.fc(torch.flatten(self.avg(x),1))


class Incep(nn.Module):
    """Inception-like branches cat on channels: LeakyReLU(0.2), Hardtanh(-1, 1), AvgPool2d(3, 1, 1), Hardsigmoid;
    max_pool2d(ceil_mode=True), reshape(-1, F), BatchNorm1d, F.dropout, Mul/Div/Sub by Python floats."""
    def __init__(self):
        super().__init__()
        self.a=nn.Sequential(nn.Conv2d(1,4,3,padding=1),nn.BatchNorm2d(4),nn.LeakyReLU(0.2))
        self.b=nn.Sequential(nn.Conv2d(1,4,3,padding=1),nn.BatchNorm2d(4),nn.Hardtanh(-1.0,1.0))
        self.c=nn.Sequential(nn.AvgPool2d(3,1,1),nn.Conv2d(1,4,3,padding=1),nn.BatchNorm2d(4),nn.Hardsigmoid())
        self.fc1=nn.Linear(12*7*7,32); self.bn=nn.BatchNorm1d(32); self.fc2=nn.Linear(32,10)

    def forward(self,x):
        y=torch.cat([self.a(x),self.b(x),self.c(x)],dim=1)
        y=F.max_pool2d(y,3,2,ceil_mode=True)  # 28 -> 14 (13 in floor mode)
        y=F.avg_pool2d(y,2)
        y=y.reshape(-1, 12*7*7)
        y=F.dropout(F.leaky_relu(self.bn(self.fc1(y))), 0.0, self.training)
        return self.fc2(y*0.5 + y/4.0 - 0.1)

class ActNet(nn.Module):
    """Activations built from several ONNX ops: GELU (Div, Erf, Add, Mul), its tanh form (Mul, Add, Tanh),
    Mish (Softplus, Tanh, Mul), ELU;
    nn.PReLU with one slope per channel and with one for all (trained weights)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1, bias=False), BN(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), BN(8)
        self.prelu, self.prelu1 = nn.PReLU(8), nn.PReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.gelu(self.bn1(self.conv1(x)))
        x = F.mish(self.bn2(self.conv2(x)))
        x = self.prelu(x + 0.5 * F.gelu(x, approximate="tanh") - 0.2)  # tanh GELU: x·x·x as Muls of one value, Tanh
        return self.fc(self.prelu1(F.elu(x, 0.7).mean((2, 3)) - 0.6))  # about half the features negative


class SamePad(nn.Module):
    """TensorFlow-style "same" padding: nn.ZeroPad2d((0, 1, 0, 1)) before a stride-2 conv (asymmetric, so a
    zero border and an unpadded conv), F.pad folded into a conv's padding, F.pad before a max pool."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, stride=2, bias=False), BN(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, bias=False), BN(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(self.pad(x))))  # 29 -> 14
        x = F.silu(self.bn2(self.conv2(F.pad(x, (1, 1, 1, 1)))))  # 14
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2)  # 15 -> 7
        return self.fc(x.mean((2, 3)))


def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    return torch.transpose(x.view(n, groups, c // groups, h, w), 1, 2).contiguous().view(n, -1, h, w)


class ShuffleV2(nn.Module):
    """ShuffleNetV2 units: x.chunk(2, dim=1) (Slice), torch.split (Split), torch.cat, the channel shuffle
    (Reshape to 5-D, Transpose, Reshape), depthwise convs; x[:, :, 1:, 1:] and a strided x[:, 1::2] in the head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), BN(8), nn.ReLU())
        # SiLU where ShuffleNetV2 has ReLU: with ReLU and these seed-0 weights the gradients are ill-conditioned
        # (PyTorch's own float32 ones end 1e-2 from its float64 ones), useless as a reference.
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), BN(4), nn.SiLU(),
                                    nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False), BN(4),
                                    nn.Conv2d(4, 4, 1, bias=False), BN(4), nn.SiLU())
        self.branch2 = nn.Sequential(nn.Conv2d(2, 2, 3, 1, 1, groups=2, bias=False), BN(2), nn.Conv2d(2, 2, 1, bias=False), BN(2), nn.ReLU())
        self.fc = nn.Linear(8 + 4, 10)

    def forward(self, x):
        x = self.stem(x)  # (8, 14, 14)
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)
        p, q, r = torch.split(x, [2, 2, 4], dim=1)
        x = channel_shuffle(torch.cat([p, self.branch2(q), r], 1), 4)
        y = x[:, :, 1:, 1:].mean((2, 3))  # (8)
        z = x[:, 1::2].mean((2, 3))  # channels 1, 3, 5, 7 (a step of 2)
        return self.fc(torch.cat([y, z], 1))


ZOO = {"shufflev2": ShuffleV2, "mobilev2": MobileV2, "samepad": SamePad, "efflike": EffLike, "resstem": ResStem, "incep": Incep}


def pointwise():
    """y and dx of each activation at points spread over its range, its kinks included."""
    torch.manual_seed(1)
    x = torch.cat([torch.tensor([-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 2.0, -2.0]), torch.linspace(-7, 7, 29), torch.randn(40) * 4])
    dy = torch.randn(x.shape)
    cases = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "elu": lambda t: F.elu(t, 0.5),
        "erf": torch.erf,
        "hardsigmoid": F.hardsigmoid,
        "hardswish": F.hardswish,
        "leakyrelu": lambda t: F.leaky_relu(t, 0.1),
        "relu6": F.relu6,
    }
    out = {"x": x.tolist(), "dy": dy.tolist()}
    for name, f in cases.items():
        xx = x.clone().requires_grad_(True)
        y = f(xx)
        (y * dy).sum().backward()
        out[name] = {"y": y.detach().tolist(), "dx": xx.grad.tolist()}
    os.makedirs(POINTWISE, exist_ok=True)
    with open(os.path.join(POINTWISE, "pointwise.json"), "w") as f:
        json.dump(out, f)
    print(f"pointwise: {len(cases)} activations at {len(x)} points -> {POINTWISE}")


def onestep(name, make_model, x, y, out=None):
    """The first global batch through the exported model's initial weights: logits and every gradient."""
    out = out or os.path.join(of.OUT, name)
    torch.manual_seed(0)
    model = make_model().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().double())
    model.train()
    idx = [i for r in range(tf.WORKERS) for i in tf.rank_indices(r, 0)]
    logits = model(x[idx])
    F.cross_entropy(logits, y[idx]).backward()
    arrays = {"x": x[idx].numpy().astype(np.float32), "y": y[idx].numpy().astype(np.int64), "logits": logits.detach().numpy()}
    for pname, p in model.named_parameters():
        arrays[f"grad.{pname}"] = p.grad.numpy()
    tf.save_safetensors(os.path.join(out, "onestep.safetensors"), arrays, {"made_by": "scripts/make-onnx-ops-fixtures.py"})
    print(f"{name} onestep: logits and {len(arrays) - 3} gradients -> {out}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    if not sys.argv[1:]:
        pointwise()
    x, y = tf.make_data(np.random.default_rng(12))
    settings = {"workers": tf.WORKERS, "batch": tf.BATCH, "steps": tf.STEPS, "lr": tf.LR, "momentum": tf.MOMENTUM, "weightDecay": tf.WEIGHT_DECAY,
                "bnEps": tf.BN_EPS, "bnMomentum": tf.BN_MOMENTUM, "trainSize": tf.TRAIN, "testSize": tf.TEST}
    # Names on the command line: only those whole-run fixtures (e.g. bnvarnet), nothing else rewritten.
    only = set(sys.argv[1:])
    for name, make_model in (("opsnet", OpsNet), ("poolnet", PoolNet), ("actnet", ActNet), ("bnvarnet", BnVarNet)):
        if only and name not in only:
            continue
        of.make(name, make_model, x, y)
        with open(os.path.join(of.OUT, name, "settings.json"), "w") as f:
            json.dump(settings, f, indent=1)
        onestep(name, make_model, x, y)
    for name, make_model in ZOO.items():
        if only:
            break
        out = os.path.join(POINTWISE, name)
        os.makedirs(out, exist_ok=True)
        torch.manual_seed(0)
        of.export(make_model().double(), os.path.join(out, "model.onnx"))  # the same init onestep draws and rounds
        onestep(name, make_model, x, y, out)
