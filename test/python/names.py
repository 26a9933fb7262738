"""Script for test/torch-launch.test.ts, run under `syncbn launch --dashboard`:
a model whose BatchNorm layers sit at different depths trains two steps, then
each rank waits (at most 60 s) for the file NAMES_GO to exist, so the test can
read the dashboard's state while the run is alive. Not a benchmark."""

import os
import time

import torch
import torch.nn as nn

import syncbn.torch as sbt

sbt.init_process_group()
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.norm = nn.BatchNorm1d(5)

    def forward(self, x):
        return torch.relu(self.norm(self.fc(x)))


model = sbt.convert_sync_batchnorm(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Sequential(Block(), Block()), nn.Linear(5, 2)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(int(os.environ["RANK"]))
for step in range(2):
    x = torch.randn(4, 6, generator=g)
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    sbt.all_reduce_gradients(model, loss, 4)
    opt.step()
print("trained", flush=True)
go = os.environ["NAMES_GO"]
until = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < until:
    time.sleep(0.05)
