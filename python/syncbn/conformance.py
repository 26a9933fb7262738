"""One rank of a conformance case (DESIGN.md §10) on syncbn.torch, for
`syncbn conformance DIR --workers-lang python`: a SyncBatchNorm with the case's
conventions and float64 buffers, the case's steps (forward, backward with its
dy through autograd, dγ and dβ summed in a gradient round), one eval call.
Prints one JSON report line on stdout, as the TypeScript worker reports over IPC.
Usage: python3 -m syncbn.conformance CASE_FILE RANK URL TOKEN ROUND_TIMEOUT_MS"""

import json
import sys

import torch

from . import torch as sbt


def main(argv):
    path, rank, url, token, timeout_ms = argv[1], int(argv[2]), argv[3], argv[4], argv[5]
    with open(path) as f:
        case = json.load(f)
    world = len(case["steps"][0]["workers"])
    conventions = {"eps": case["eps"], "momentum": case["momentum"], "momentumStyle": case["momentumStyle"], "unbiasedRunningVar": case["unbiasedRunningVar"]}
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "SYNCBN_COORDINATOR": url, "SYNCBN_TOKEN": token, "SYNCBN_NORM": "sync", "SYNCBN_ROUND_TIMEOUT_MS": timeout_ms}
    group = sbt.init_process_group(conventions=conventions, env=env)
    c = case["channels"]
    # Keras's momentum weighs the old value; SyncBatchNorm takes the value as given with momentum_style.
    bn = sbt.SyncBatchNorm(c, eps=case["eps"], momentum=case["momentum"], momentum_style=case["momentumStyle"], unbiased_running_var=case["unbiasedRunningVar"], dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(case["gamma"], dtype=torch.float64))
        bn.bias.copy_(torch.tensor(case["beta"], dtype=torch.float64))
    bn.train()
    report = {"type": "report", "rank": rank, "steps": [], "evalY": []}
    for step in case["steps"]:
        w = step["workers"][rank]
        x = torch.tensor(w["x"], dtype=torch.float32).reshape(w["shape"]).requires_grad_(True)
        dy = torch.tensor(w["dy"], dtype=torch.float32).reshape(w["shape"])
        bn.weight.grad = bn.bias.grad = None
        y = bn(x)
        y.backward(dy)
        shares = torch.cat([bn.weight.grad, bn.bias.grad]).to(torch.float32).contiguous()
        r = group.round("grad", -1, w["shape"][0], shares.numpy(), f32=True)
        g = torch.frombuffer(r.data, dtype=torch.float32).to(torch.float64)
        report["steps"].append({
            "y": y.detach().reshape(-1).tolist(),
            "dx": x.grad.reshape(-1).tolist(),
            "dgamma": g[:c].tolist(),
            "dbeta": g[c:].tolist(),
            "mean": bn.batch_mean.tolist(),
            "var": bn.batch_var.tolist(),
            "runningMean": bn.running_mean.tolist(),
            "runningVar": bn.running_var.tolist(),
        })
    bn.eval()
    ev = case["eval"]
    with torch.no_grad():
        report["evalY"] = bn(torch.tensor(ev["x"], dtype=torch.float32).reshape(ev["shape"]).to(torch.float64)).reshape(-1).tolist()
    sbt.destroy_process_group()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
