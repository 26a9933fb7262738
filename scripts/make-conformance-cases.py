#!/usr/bin/env python3
"""Extra sync-BN conformance cases in the format of ../shared/conformance/README.md.

Expected values come from an independent float64 numpy implementation of
torch.nn.functional.batch_norm applied to the CONCATENATION of the workers'
slices (PyTorch semantics: biased var to normalize, unbiased for running var,
cumulative average when momentum is None). Not a test itself: run it to
regenerate test/fixtures/conformance/*.json.
"""
import json, os, sys
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "conformance")


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def make_case(name, rng, channels, spatial, sizes_per_step, eps=1e-5, momentum=0.1, style="torch",
              unbiased=True, loc=0.0, scale=1.0, eval_n=3):
    C = channels
    S = int(np.prod(spatial)) if spatial else 1
    gamma = f32(rng.uniform(0.3, 1.7, C))
    beta = f32(rng.normal(0, 0.5, C))
    rmean = np.zeros(C)
    rvar = np.ones(C)
    tracked = 0
    steps = []
    for sizes in sizes_per_step:
        xs = [f32(loc + scale * rng.normal(0, 1, (n, C, S)) * rng.uniform(0.5, 2, (1, C, 1))) for n in sizes]
        dys = [f32(rng.normal(0, 1, (n, C, S))) for n in sizes]
        x = np.concatenate(xs, 0)
        dy = np.concatenate(dys, 0)
        n = x.shape[0] * S
        mean = x.mean(axis=(0, 2))
        var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        inv = 1 / np.sqrt(var + eps)
        xhat = (x - mean[None, :, None]) * inv[None, :, None]
        y = gamma[None, :, None] * xhat + beta[None, :, None]
        s1 = dy.sum(axis=(0, 2))
        s2 = (dy * xhat).sum(axis=(0, 2))
        dx = (gamma * inv)[None, :, None] * (dy - s1[None, :, None] / n - xhat * s2[None, :, None] / n)
        tracked += 1
        if momentum is None:
            f = 1.0 / tracked
        elif style == "torch":
            f = momentum
        else:
            f = 1 - momentum
        uv = var * n / (n - 1) if unbiased else var
        rmean = (1 - f) * rmean + f * mean
        rvar = (1 - f) * rvar + f * uv
        workers = []
        off = 0
        for k, nk in enumerate(sizes):
            shape = [nk, C] + list(spatial)
            workers.append({"shape": shape, "x": xs[k].ravel().tolist(), "dy": dys[k].ravel().tolist(),
                            "expected": {"y": y[off:off + nk].ravel().tolist(), "dx": dx[off:off + nk].ravel().tolist()}})
            off += nk
        steps.append({"workers": workers, "expected": {"dgamma": s2.tolist(), "dbeta": s1.tolist(), "mean": mean.tolist(),
                                                        "var": var.tolist(), "runningMean": rmean.tolist(), "runningVar": rvar.tolist()}})
    xe = f32(loc + scale * rng.normal(0, 1, (eval_n, C, S)))
    ye = gamma[None, :, None] * (xe - rmean[None, :, None]) / np.sqrt(rvar[None, :, None] + eps) + beta[None, :, None]
    return {"name": name, "channels": C, "spatial": list(spatial), "eps": eps, "momentum": momentum, "momentumStyle": style,
            "unbiasedRunningVar": unbiased, "gamma": gamma.tolist(), "beta": beta.tolist(), "steps": steps,
            "eval": {"shape": [eval_n, C] + list(spatial), "x": xe.ravel().tolist(), "expected": {"y": ye.ravel().tolist()}}}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261122)
    cases = [
        # |mean| ≫ std: raw float32 Σx, Σx² would cancel catastrophically here.
        make_case("large-mean-4workers-one-empty", rng, 3, [2, 2], [[3, 0, 2, 4], [1, 2, 0, 3]], loc=3000.0, scale=0.01),
        make_case("cumulative-momentum-3steps", rng, 4, [3, 3], [[2, 3], [4, 1], [2, 2]], momentum=None),
        make_case("8workers-one-sample-each", rng, 6, [], [[1] * 8, [1] * 8]),
        make_case("torch-biased-running-var", rng, 2, [5, 1], [[2, 1, 1], [1, 1, 2]], unbiased=False, eps=1e-3),
        make_case("keras-cumulative-empty-first-rank", rng, 3, [], [[0, 4, 3], [2, 0, 5]], momentum=None, style="keras", unbiased=False),
        make_case("single-worker", rng, 4, [2, 3], [[3], [5]]),
    ]
    for c in cases:
        with open(os.path.join(OUT, c["name"] + ".json"), "w") as f:
            json.dump(c, f)
        print("wrote", c["name"])


if __name__ == "__main__":
    sys.exit(main())
