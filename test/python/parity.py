"""Parity script for test/torch-launch.test.ts, run under `syncbn launch`: a
model with BatchNorm2d and BatchNorm1d (momentum None) trained W ranks × 8
samples with syncbn.torch, then the same training in float64 with plain BN on
each statistics group's concatenated batch (all ranks for sync, K for group:K,
one for local), gradients averaged over the groups. Writes OUT/rank<r>.json
with the largest difference per state_dict tensor. Not a benchmark."""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import syncbn.torch as sbt

PER_RANK = 8
STEPS = int(os.environ.get("PARITY_STEPS", "5"))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(16, 8)
        self.bn1 = nn.BatchNorm1d(8, momentum=None)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.bn1(self.fc1(x))))


def build():
    torch.manual_seed(0)
    return Net()


def main():
    group = sbt.init_process_group()
    rank, world, k = group.rank, group.world_size, group.group_size
    out = os.environ["PARITY_OUT"]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(world * PER_RANK, 3, 6, 6, generator=g) * 2 + 0.5 for _ in range(STEPS)]
    ys = [torch.randint(0, 3, (world * PER_RANK,), generator=g) for _ in range(STEPS)]

    model = sbt.convert_sync_batchnorm(build())
    model.load_state_dict(build().state_dict())  # checkpoints of the original model load (same names)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for s in range(STEPS):
        x = xs[s][rank * PER_RANK : (rank + 1) * PER_RANK]
        y = ys[s][rank * PER_RANK : (rank + 1) * PER_RANK]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        sbt.all_reduce_gradients(model, loss=loss.item(), batch_size=PER_RANK)
        opt.step()
    model.eval()
    before = group.last
    eval_out = model(xs[0][:4])  # eval mode: running statistics, no rounds
    eval_rounds = group.last != before
    build().load_state_dict(model.state_dict())  # and the converted model's state loads back into the original
    assert all(isinstance(m, sbt.SyncBatchNorm) for m in (model.bn1, model.bn2)) and model.bn1.momentum is None

    # The reference: one float64 plain-BN model per statistics group, on the group's whole batch.
    groups = world // k
    refs = [build().double() for _ in range(groups)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in refs]
    for s in range(STEPS):
        grads = None
        for gi, m in enumerate(refs):
            lo, hi = gi * k * PER_RANK, (gi + 1) * k * PER_RANK
            m.zero_grad()
            F.cross_entropy(m(xs[s][lo:hi].double()), ys[s][lo:hi]).backward()
            gs = [p.grad.clone() for p in m.parameters()]
            grads = gs if grads is None else [a + b for a, b in zip(grads, gs)]
        for m, o in zip(refs, opts):
            for p, gsum in zip(m.parameters(), grads):
                p.grad = gsum / groups
            o.step()
    ref = refs[rank // k]
    ref.eval()
    diffs = {}
    ref_state = ref.state_dict()
    for name, t in model.state_dict().items():
        diffs[name] = float((t.double() - ref_state[name].double()).abs().max()) if t.numel() else 0.0
    diffs["eval_output"] = float((eval_out.double() - ref(xs[0][:4].double())).abs().max())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "norm": group.norm, "diffs": diffs, "steps": group.step, "evalRounds": eval_rounds}, f)
    print(f"rank {rank} norm {group.norm}: largest difference {max(diffs.values()):.3g}")


if __name__ == "__main__":
    main()
