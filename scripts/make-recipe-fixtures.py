#!/usr/bin/env python3
"""PyTorch-computed fixtures of the training recipe (issue 24), for test/recipe.test.ts
and test/torch-parity.test.ts.

1. test/fixtures/recipe.json: learning rates from torch.optim.lr_scheduler
   (MultiStepLR, CosineAnnealingLR, and linear warm-up as syncbn defines it:
   LinearLR(start_factor=1/N, end_factor=1, total_iters=N-1) chained with the
   schedule), F.cross_entropy(label_smoothing=eps) with its gradient w.r.t. the
   logits, and a few torch.optim.SGD(nesterov=True) steps on a small tensor.
2. test/fixtures/torch/mlp-recipe/: syncbn's `mlp` trained 4 steps on the IDX data
   of make-torch-fixtures.py (read back from test/fixtures/torch/data, not
   rewritten) with cosine + warm-up 2 + Nesterov + label smoothing 0.1, in float64.

Run by hand:  /usr/bin/python3 scripts/make-recipe-fixtures.py   (torch 1.13). Not a test.
"""

import gzip
import importlib.util
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, MultiStepLR

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "test", "fixtures")

# The safetensors writer, data order and BN constants of the existing parity fixtures: one copy of each.
_spec = importlib.util.spec_from_file_location("torch_fixtures", os.path.join(HERE, "make-torch-fixtures.py"))
tf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tf)


# ---- 1. schedules, loss, optimizer ---------------------------------------------------
def scheduler_lrs(base_lr, total, make):
    """The lr each of `total` optimizer steps uses, with the scheduler stepped after every one (per iteration)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make(opt) if make else None
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
    return out


def warm_then(n, make):
    """syncbn's warm-up of n > 1 steps times a schedule (None: constant): LinearLR(1/n -> 1 over n-1 steps) chained with it."""
    if n <= 1:
        return make
    if make is None:  # constant: the warm-up alone
        return lambda opt: LinearLR(opt, start_factor=1 / n, end_factor=1.0, total_iters=n - 1)
    return lambda opt: ChainedScheduler([LinearLR(opt, start_factor=1 / n, end_factor=1.0, total_iters=n - 1), make(opt)])


def closed_form(kind, base_lr, t, total, milestones, gamma, warm):
    """The formula worker/nn/lr-schedule.ts documents (a LambdaLR would give it); checks the chained schedulers."""
    w = min(1.0, (t + 1) / warm) if warm > 0 else 1.0
    s = 1.0
    if kind == "step":
        s = gamma ** sum(1 for m in milestones if m <= t)
    elif kind == "cosine":
        s = (1 + math.cos(math.pi * t / total)) / 2
    return base_lr * w * s


def schedule_cases():
    cases = []
    specs = [
        ("step", 0.1, 12, [3, 7], 0.1, 0),
        ("step", 0.4, 10, [2, 5, 8], 0.5, 4),
        ("cosine", 0.05, 10, [], 0.1, 0),
        ("cosine", 0.2, 17, [], 0.1, 5),
        ("constant", 0.3, 8, [], 0.1, 3),
    ]
    for kind, lr, total, milestones, gamma, warm in specs:
        if kind == "step":
            make = lambda opt, m=milestones, g=gamma: MultiStepLR(opt, milestones=m, gamma=g)
        elif kind == "cosine":
            make = lambda opt, T=total: CosineAnnealingLR(opt, T_max=T, eta_min=0)
        else:
            make = None  # LambdaLR would not chain: it sets lr = base·λ(t), overriding the warm-up
        lrs = scheduler_lrs(lr, total, warm_then(warm, make))
        for t, v in enumerate(lrs):
            want = closed_form(kind, lr, t, total, milestones, gamma, warm)
            assert abs(v - want) <= 1e-12 * abs(want), (kind, t, v, want)
        cases.append({"kind": kind, "lr": lr, "totalSteps": total, "milestones": milestones, "gamma": gamma, "warmup": warm, "lrs": lrs})
    return cases


def loss_cases(rng):
    cases = []
    for eps, n, k in ((0.0, 4, 5), (0.1, 4, 5), (0.3, 6, 10), (0.9, 3, 7)):
        # float32 logits (what syncbn's loss takes), computed on in float64.
        logits = rng.normal(0, 2, size=(n, k)).astype(np.float32).astype(np.float64)
        labels = rng.integers(0, k, size=n)
        z = torch.tensor(logits, requires_grad=True)
        loss = F.cross_entropy(z, torch.tensor(labels), label_smoothing=eps)
        loss.backward()
        cases.append({"labelSmoothing": eps, "n": n, "classes": k, "logits": logits.ravel().tolist(), "labels": labels.tolist(),
                      "loss": loss.item(), "dlogits": z.grad.numpy().ravel().tolist()})
    return cases


def nesterov_case(rng):
    size, steps, lr, momentum, wd = 6, 4, 0.1, 0.9, 5e-4
    p0 = rng.normal(0, 1, size=size).astype(np.float32)
    grads = [rng.normal(0, 1, size=size).astype(np.float32) for _ in range(steps)]
    p = torch.tensor(p0.astype(np.float64), requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=wd, nesterov=True)
    after = []
    for g in grads:
        p.grad = torch.tensor(g.astype(np.float64))
        opt.step()
        after.append(p.detach().numpy().tolist())
    return {"lr": lr, "momentum": momentum, "weightDecay": wd, "param": p0.tolist(), "grads": [g.tolist() for g in grads], "after": after}


# ---- 2. a whole run ------------------------------------------------------------------
class Mlp(nn.Module):
    """syncbn's `mlp` (worker/nn/model.ts), attribute names = its layer names."""

    def __init__(self, inputs=784, classes=10):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(inputs, 256), nn.BatchNorm1d(256, tf.BN_EPS, tf.BN_MOMENTUM)
        self.fc2, self.bn2 = nn.Linear(256, 128), nn.BatchNorm1d(128, tf.BN_EPS, tf.BN_MOMENTUM)
        self.fc3 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.fc1(x.flatten(1))))
        return self.fc3(F.relu(self.bn2(self.fc2(x))))


def read_idx_train():
    """The training split make-torch-fixtures.py wrote, mapped as syncbn maps IDX pixels."""
    d = os.path.join(FIXTURES, "torch", "data")
    with gzip.open(os.path.join(d, "train-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    count, rows, cols = struct.unpack(">III", raw[4:16])
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(os.path.join(d, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    x = ((images.astype(np.float64) / 255 - tf.MEAN) / tf.STD).astype(np.float32).astype(np.float64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


RUN = {"workers": 4, "batch": 4, "steps": 4, "lr": 0.05, "momentum": 0.9, "weightDecay": 5e-4, "bnEps": tf.BN_EPS, "bnMomentum": tf.BN_MOMENTUM,
       "trainSize": tf.TRAIN, "testSize": tf.TEST, "lrSchedule": "cosine", "warmup": 2, "nesterov": True, "labelSmoothing": 0.1}


def make_run_fixture():
    out = os.path.join(FIXTURES, "torch", "mlp-recipe")
    os.makedirs(out, exist_ok=True)
    x, y = read_idx_train()
    torch.manual_seed(0)
    model = Mlp().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().double())  # both sides start from the float16 init file's exact values (half the bytes of float32)
    meta = {"format": "pt", "made_by": "scripts/make-recipe-fixtures.py"}
    tf.save_safetensors(os.path.join(out, "init.safetensors"), tf.state_arrays(model, np.float16), meta)
    opt = torch.optim.SGD(model.parameters(), lr=RUN["lr"], momentum=RUN["momentum"], weight_decay=RUN["weightDecay"], nesterov=True)
    sched = warm_then(RUN["warmup"], lambda o: CosineAnnealingLR(o, T_max=RUN["steps"], eta_min=0))(opt)
    W, B = RUN["workers"], RUN["batch"]
    model.train()
    lrs = []
    for t in range(RUN["steps"]):
        opt.zero_grad()
        idx = [r + W * (t * B + j) for r in range(W) for j in range(B)]  # --shuffle off, rank-major: one global batch (sync BN)
        F.cross_entropy(model(x[idx]), y[idx], label_smoothing=RUN["labelSmoothing"]).backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    tf.save_safetensors(os.path.join(out, "expected-sync.safetensors"), tf.state_arrays(model), meta)
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump({**RUN, "lrs": lrs}, f, indent=1)
    print(f"mlp-recipe: lrs {lrs} -> {out}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(24)
    fixture = {
        "made_by": "scripts/make-recipe-fixtures.py",
        "torch": torch.__version__,
        "schedules": schedule_cases(),
        "crossEntropy": loss_cases(rng),
        "nesterov": nesterov_case(rng),
    }
    with open(os.path.join(FIXTURES, "recipe.json"), "w") as f:
        json.dump(fixture, f, indent=1)
    print(f"recipe.json: {len(fixture['schedules'])} schedules, {len(fixture['crossEntropy'])} losses, nesterov {len(fixture['nesterov']['after'])} steps")
    make_run_fixture()
