#!/usr/bin/env python3
"""Float64 PyTorch reference of cross-iteration BN (--norm cbn:K) for test/cbn.test.ts.

An independent reimplementation of Yao et al. 2021 following the official
CBatchNorm2d (github.com/Howal/Cross-iterationBatchNorm, mmdet/models/utils/CBN.py),
with the conventions syncbn chose (docs/cbn.md): eps inside the square root as
PyTorch BN, running statistics from the compensated mean and variance with
Bessel's factor for count*M values, plain BN while the window holds no past step,
bias compensated too. The Jacobians dmu/dW, dnu/dW come from torch.autograd, not
from the closed forms syncbn uses, so the two meet only if both are right.

Net: x (N, 2, 5, 5) -> conv 3x3 (2->3, pad 1, bias) -> CBN -> ReLU -> flatten ->
linear (75->6) -> CBN -> y; loss = sum(y * R_t) with a fresh R_t per step; plain
SGD on every parameter, weights rounded to float32 after each update (syncbn keeps
float32 parameters). Also records the same run's outputs with the Taylor terms
zeroed ("nocomp"), so the test can show the compensation is what it matches.

Run by hand: /usr/bin/python3 scripts/make-cbn-fixtures.py  (writes test/fixtures/cbn/cbn.json)
"""

import json
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "cbn")
N, CIN, C1, SIDE, F2 = 4, 2, 3, 5, 6
WINDOW, BURNIN, STEPS = 3, 1, 7
LR, EPS, MOMENTUM = 0.05, 1e-5, 0.1


class CbnRef:
    """One cross-iteration BN layer; x must depend on (w, b) through autograd."""

    def __init__(self, channels, compensate=True):
        self.past = []  # newest first: dicts of mean, meansq, dmu_w, dmu_b, dnu_w, dnu_b, w, b
        self.steps = 0
        self.compensate = compensate
        self.running_mean = torch.zeros(channels)
        self.running_var = torch.ones(channels)
        self.count = torch.ones(channels)

    def forward(self, x, w, b, gamma, beta):
        self.steps += 1
        dims = [0] + list(range(2, x.dim()))
        m = x.numel() // x.shape[1]
        active = WINDOW > 1 and self.steps > BURNIN
        mu = x.mean(dims)
        nu = (x * x).mean(dims)
        shape = [1, -1] + [1] * (x.dim() - 2)
        if active:
            ones = torch.ones_like(mu)
            dmu_w, dmu_b = torch.autograd.grad(mu, [w, b], ones, retain_graph=True)
            dnu_w, dnu_b = torch.autograd.grad(nu, [w, b], ones, retain_graph=True)
        if active and self.past:
            wd, bd = w.detach(), b.detach()
            mean_sum, meansq_sum, count = mu, nu, torch.ones_like(mu)
            for p in self.past:
                k = 1.0 if self.compensate else 0.0
                pm = p["mean"] + k * ((p["dmu_w"] * (wd - p["w"])).flatten(1).sum(1) + p["dmu_b"] * (bd - p["b"]))
                pn = p["meansq"] + k * ((p["dnu_w"] * (wd - p["w"])).flatten(1).sum(1) + p["dnu_b"] * (bd - p["b"]))
                keep = (pn - pm * pm >= 0).to(torch.float64)
                mean_sum = mean_sum + keep * pm
                meansq_sum = meansq_sum + keep * pn
                count = count + keep
            mean = mean_sum / count
            var = torch.clamp(meansq_sum / count - mean * mean, min=0)
            values = count * m
            self.count = count.detach().clone()
        else:
            mean = mu
            var = x.var(dims, unbiased=False)
            values = torch.full_like(mu, m)
            self.count = torch.ones_like(mu)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS) * gamma.view(shape) + beta.view(shape)
        with torch.no_grad():
            self.running_mean = (1 - MOMENTUM) * self.running_mean + MOMENTUM * mean
            self.running_var = (1 - MOMENTUM) * self.running_var + MOMENTUM * var * values / (values - 1)
        if active:
            entry = {"mean": mu.detach().clone(), "meansq": nu.detach().clone(), "dmu_w": dmu_w, "dmu_b": dmu_b,
                     "dnu_w": dnu_w, "dnu_b": dnu_b, "w": w.detach().clone(), "b": b.detach().clone()}
            self.past = ([entry] + self.past)[: WINDOW - 1]
        return y


def f32(a):
    return torch.tensor(np.asarray(a, dtype=np.float32).astype(np.float64))


def run(params, batches, targets, compensate):
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    bn1, bn2 = CbnRef(C1, compensate), CbnRef(F2, compensate)
    steps = []
    for x, r in zip(batches, targets):
        h = torch.nn.functional.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
        h = bn1.forward(h, p["conv1.weight"], p["conv1.bias"], p["bn1.weight"], p["bn1.bias"])
        h = torch.relu(h).flatten(1)
        h = h @ p["fc.weight"].T + p["fc.bias"]
        y = bn2.forward(h, p["fc.weight"], p["fc.bias"], p["bn2.weight"], p["bn2.bias"])
        loss = (y * r).sum()
        grads = torch.autograd.grad(loss, list(p.values()))
        steps.append({
            "y": y.detach().flatten().tolist(),
            "grads": {k: g.flatten().tolist() for k, g in zip(p, grads)},
            "bn": [{"running_mean": bn.running_mean.tolist(), "running_var": bn.running_var.tolist(), "count": bn.count.tolist()} for bn in (bn1, bn2)],
        })
        with torch.no_grad():
            for (k, v), g in zip(p.items(), grads):
                v.copy_((v - LR * g).to(torch.float32).to(torch.float64))
    return steps


def main():
    rng = np.random.default_rng(24)
    params = {
        "conv1.weight": f32(rng.uniform(-0.4, 0.4, (C1, CIN, 3, 3))),
        "conv1.bias": f32(rng.uniform(-0.3, 0.3, C1)),
        "bn1.weight": f32(rng.uniform(0.5, 1.5, C1)),
        "bn1.bias": f32(rng.uniform(-0.2, 0.2, C1)),
        "fc.weight": f32(rng.uniform(-0.15, 0.15, (F2, C1 * SIDE * SIDE))),
        "fc.bias": f32(rng.uniform(-0.1, 0.1, F2)),
        "bn2.weight": f32(rng.uniform(0.5, 1.5, F2)),
        "bn2.bias": f32(rng.uniform(-0.2, 0.2, F2)),
    }
    # A drifting input distribution per channel, so past statistics differ from the current ones.
    batches = [f32(rng.normal(0.3 * t, 1.0, (N, CIN, SIDE, SIDE))) for t in range(STEPS)]
    targets = [f32(rng.normal(0, 1, (N, F2))) for _ in range(STEPS)]
    fixture = {
        "about": "scripts/make-cbn-fixtures.py: float64 PyTorch CBN reference, conv+CBN+ReLU+linear+CBN, plain SGD",
        "shapes": {"n": N, "cin": CIN, "c1": C1, "side": SIDE, "f2": F2},
        "window": WINDOW, "burnin": BURNIN, "lr": LR, "eps": EPS, "momentum": MOMENTUM,
        "params": {k: v.flatten().tolist() for k, v in params.items()},
        "batches": [x.flatten().tolist() for x in batches],
        "targets": [r.flatten().tolist() for r in targets],
        "steps": run(params, batches, targets, True),
        "nocomp": [s["y"] for s in run(params, batches, targets, False)],
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "cbn.json"), "w") as f:
        json.dump(fixture, f)
    print(f"wrote {os.path.join(OUT, 'cbn.json')}: {STEPS} steps, window {WINDOW}, burn-in {BURNIN}")


if __name__ == "__main__":
    main()
