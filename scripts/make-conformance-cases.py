#!/usr/bin/env python3
"""Sync-BN conformance cases computed with PyTorch (format: DESIGN.md §10).

Writes test/fixtures/conformance/*.json: inputs drawn here (float32 values),
expected values from torch.nn.functional.batch_norm in float64 on the
CONCATENATION of the workers' slices, gradients by autograd. Not a test itself:
run it where PyTorch is installed and commit its output.

  python3 scripts/make-conformance-cases.py            # regenerate the fixtures
  python3 scripts/make-conformance-cases.py --check D  # recompute every case in D, print the max difference
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "conformance")


def new_value_weight(momentum, style, t):
    """Weight of the new batch value in the t-th running-stat update (t >= 1)."""
    if momentum is None:
        return 1.0 / t  # PyTorch's cumulative moving average (momentum=None)
    return momentum if style == "torch" else 1.0 - momentum


def expected_for(case):
    """Recomputes every expected value of a case from its inputs; returns a new case dict."""
    C, eps = case["channels"], case["eps"]
    gamma0 = torch.tensor(case["gamma"], dtype=torch.float64)
    beta0 = torch.tensor(case["beta"], dtype=torch.float64)
    rm = torch.zeros(C, dtype=torch.float64)
    rv = torch.ones(C, dtype=torch.float64)
    tracked = 0
    steps = []
    for st in case["steps"]:
        shapes = [w["shape"] for w in st["workers"]]
        xs = [torch.tensor(w["x"], dtype=torch.float64).reshape(w["shape"]) for w in st["workers"]]
        dys = [torch.tensor(w["dy"], dtype=torch.float64).reshape(w["shape"]) for w in st["workers"]]
        x = torch.cat(xs, 0).requires_grad_(True)  # (N, C, ...) the global batch
        dy = torch.cat(dys, 0)
        dims = [0] + list(range(2, x.dim()))
        n = x.shape[0] * (math.prod(x.shape[2:]) if x.dim() > 2 else 1)
        if n < 2:
            raise ValueError(f"{case['name']}: a training step needs more than 1 value per channel over the global batch")
        gamma = gamma0.clone().requires_grad_(True)
        beta = beta0.clone().requires_grad_(True)
        tracked += 1
        f = new_value_weight(case["momentum"], case["momentumStyle"], tracked)
        var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
        if case["unbiasedRunningVar"]:
            # PyTorch's own running-stat update (unbiased var), with the factor of this convention.
            y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=f, eps=eps)
        else:
            # PyTorch's update always uses the unbiased var; Keras/Flax keep the biased one.
            y = F.batch_norm(x, None, None, gamma, beta, training=True, momentum=f, eps=eps)
            rm = (1 - f) * rm + f * mean
            rv = (1 - f) * rv + f * var
        y.backward(dy)
        ys, dxs, off = [], [], 0
        for s in shapes:
            ys.append(y.detach()[off:off + s[0]].reshape(-1).tolist())
            dxs.append(x.grad[off:off + s[0]].reshape(-1).tolist())
            off += s[0]
        workers = [dict(w, expected={"y": ys[k], "dx": dxs[k]}) for k, w in enumerate(st["workers"])]
        steps.append({"workers": workers, "expected": {
            "dgamma": gamma.grad.tolist(), "dbeta": beta.grad.tolist(), "mean": mean.tolist(), "var": var.tolist(),
            "runningMean": rm.tolist(), "runningVar": rv.tolist()}})
    ex = torch.tensor(case["eval"]["x"], dtype=torch.float64).reshape(case["eval"]["shape"])
    ey = F.batch_norm(ex, rm, rv, gamma0, beta0, training=False, eps=eps)
    out = dict(case, steps=steps)
    out["eval"] = dict(case["eval"], expected={"y": ey.reshape(-1).tolist()})
    return out


def f32(t):
    """float32 values as Python floats (exactly representable in float32)."""
    return t.to(torch.float32).to(torch.float64).reshape(-1).tolist()


def make_case(name, gen, channels, spatial, sizes_per_step, eps=1e-5, momentum=0.1, style="torch", unbiased=True,
              loc=0.0, scale=1.0, eval_n=3, constant_channel=None):
    C = channels
    scales = torch.rand(C, generator=gen, dtype=torch.float64) * 1.5 + 0.5  # per-channel std
    shifts = torch.randn(C, generator=gen, dtype=torch.float64)
    bcast = [1, C] + [1] * len(spatial)

    def draw(n):
        x = loc + scale * (shifts.reshape(bcast) + scales.reshape(bcast) * torch.randn([n, C] + spatial, generator=gen, dtype=torch.float64))
        if constant_channel is not None:
            x[:, constant_channel] = loc + 0.75  # zero variance in this channel
        return x

    steps = []
    for sizes in sizes_per_step:
        workers = []
        for n in sizes:
            shape = [n, C] + list(spatial)
            workers.append({"shape": shape, "x": f32(draw(n)), "dy": f32(torch.randn(shape, generator=gen, dtype=torch.float64))})
        steps.append({"workers": workers})
    case = {"name": name, "channels": C, "spatial": list(spatial), "eps": eps, "momentum": momentum, "momentumStyle": style,
            "unbiasedRunningVar": unbiased,
            "gamma": f32(torch.rand(C, generator=gen, dtype=torch.float64) * 1.4 + 0.3),
            "beta": f32(torch.randn(C, generator=gen, dtype=torch.float64) * 0.5),
            "steps": steps,
            "eval": {"shape": [eval_n, C] + list(spatial), "x": f32(draw(eval_n))}}
    return expected_for(case)


def cases():
    gen = torch.Generator().manual_seed(20261201)
    return [
        make_case("fc-2workers-even-3steps", gen, 4, [], [[4, 4], [3, 3], [5, 5]]),
        make_case("conv-3workers-uneven-one-empty", gen, 3, [3, 4], [[2, 0, 3], [1, 4, 2]]),
        # One sample per worker in a conv layer: each worker has H·W values per channel, so n > 1.
        make_case("conv-5workers-one-sample-each", gen, 2, [2, 3], [[1] * 5, [1] * 5]),
        make_case("fc-8workers-one-sample-each", gen, 6, [], [[1] * 8, [1] * 8]),
        # |mean| ≫ std: raw float32 Σx, Σx² would cancel catastrophically here.
        make_case("large-mean-4workers-one-empty", gen, 3, [2, 2], [[3, 0, 2, 4], [1, 2, 0, 3]], loc=3000.0, scale=0.01),
        make_case("large-mean-fc-2workers", gen, 4, [], [[3, 5], [4, 4]], loc=-1.0e4, scale=0.05),
        make_case("cumulative-momentum-null-3steps", gen, 4, [3, 3], [[2, 3], [4, 1], [2, 2]], momentum=None),
        make_case("keras-style-momentum-0.99-biased-var", gen, 5, [2, 2], [[2, 3], [3, 1], [2, 2]], momentum=0.99, style="keras",
                  unbiased=False, eps=1e-3),
        make_case("keras-cumulative-empty-first-rank", gen, 3, [], [[0, 4, 3], [2, 0, 5]], momentum=None, style="keras", unbiased=False),
        make_case("torch-biased-running-var", gen, 2, [5, 1], [[2, 1, 1], [1, 1, 2]], unbiased=False, eps=1e-3),
        make_case("torch-momentum-1-last-batch", gen, 3, [], [[3, 2], [2, 4]], momentum=1.0),
        make_case("single-worker-4steps", gen, 4, [2, 3], [[3], [5], [1], [2]]),
        make_case("fc-4workers-6steps-varying-slices", gen, 3, [], [[2, 0, 3, 1], [1, 1, 1, 1], [0, 0, 4, 0], [3, 2, 0, 2],
                                                                   [1, 3, 2, 2], [2, 2, 2, 0]]),
        make_case("constant-channel-eps-1e-3", gen, 3, [2, 2], [[2, 2], [3, 1]], eps=1e-3, constant_channel=1),
        make_case("conv-2workers-8channels-4x4", gen, 8, [4, 4], [[2, 2], [1, 3]], eval_n=2),
        # Appended (the cases above keep their bytes): many ranks, mostly empty or single; extreme eps; momentum 0
        # (the running statistics never move) and a Keras 0.5; a 1×1 plane; tiny spread around a large mean.
        make_case("fc-16workers-mostly-empty-eps-1e-8", gen, 5, [], [[0, 1, 0, 0, 2, 0, 1, 0, 0, 0, 0, 3, 0, 0, 1, 0], [1] * 16], eps=1e-8),
        make_case("conv-1x1-plane-momentum-0-eps-0.5", gen, 7, [1, 1], [[2, 1, 3], [1, 1, 0], [0, 4, 1]], momentum=0.0, eps=0.5),
        make_case("keras-momentum-0.5-large-mean-conv", gen, 4, [2, 3], [[1, 0, 2, 1], [2, 2, 0, 0]], momentum=0.5, style="keras", loc=5000.0, scale=1e-3),
    ]


def check(folder):
    worst = 0.0
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".json"):
            continue
        with open(os.path.join(folder, f)) as fh:
            case = json.load(fh)
        mine = expected_for(case)
        err = max_diff(case, mine)
        worst = max(worst, err)
        print(f"{case['name']}: max |difference| {err:.3e}")
    print(f"worst {worst:.3e}")
    return 0 if worst <= 1e-10 else 1


def max_diff(a, b):
    if isinstance(a, dict):
        return max([max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list):
        return max([max_diff(u, v) for u, v in zip(a, b)] or [0.0])
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return abs(a - b)
    return 0.0 if a == b else math.inf


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", metavar="DIR", help="recompute the expected values of every case in DIR and compare")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    if args.check:
        return check(args.check)
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".json"):
            os.remove(os.path.join(OUT, f))
    for c in cases():
        with open(os.path.join(OUT, c["name"] + ".json"), "w") as fh:
            json.dump(c, fh)
        print("wrote", c["name"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
