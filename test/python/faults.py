"""Fault script for test/torch-launch.test.ts, run under `syncbn launch`: a
small BN model trained a few steps, where FAULT=RANK:KIND makes one rank
misbehave: die (SIGKILL itself at step 3), raise (an exception at step 3;
raise-slow also takes 3 s to exit after its connection closed, as a loaded
machine's interpreter teardown can; raise-between raises while the other
ranks sleep 3 s before step 3, so no round is open),
hang (sleep at step 3), noinit (never call init_process_group; with
noinit-exit it exits 0 at once), late (sleep LATE_S seconds before
init_process_group, as a rank still importing on a loaded machine), token (a wrong SYNCBN_TOKEN), layers (one
BatchNorm layer more than the others). Every rank prints the CPUs it may run
on (the launcher's --pin-cpus). Not a benchmark."""

import atexit
import os
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import syncbn.torch as sbt

bad_rank, kind = os.environ.get("FAULT", "-1:none").split(":")
me = int(os.environ["RANK"])
faulty = me == int(bad_rank)

if faulty and kind == "noinit":
    time.sleep(600)
if faulty and kind == "noinit-exit":
    print("training alone")
    sys.exit(0)
if faulty and kind == "late":
    time.sleep(float(os.environ["LATE_S"]))
if faulty and kind == "token":
    os.environ["SYNCBN_TOKEN"] = "not-the-token"
if faulty and kind == "raise-slow":
    # Registered before init: atexit runs it after syncbn's own hook closed the connection.
    atexit.register(time.sleep, 3)
sbt.init_process_group()
print("cpus", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))

torch.manual_seed(0)
layers = [nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU()]
if faulty and kind == "layers":
    layers += [nn.Linear(5, 5), nn.BatchNorm1d(5), nn.ReLU()]
model = sbt.convert_sync_batchnorm(nn.Sequential(*layers, nn.Linear(5, 2)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(me)
for step in range(1, 6):
    if faulty and step == 3:
        if kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind in ("raise", "raise-slow", "raise-between"):
            raise ValueError("the script of this rank failed")
        if kind == "hang":
            time.sleep(600)
    if not faulty and kind == "raise-between" and step == 3:
        time.sleep(3)
    x = torch.randn(4, 6, generator=g)
    y = torch.randint(0, 2, (4,), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    sbt.all_reduce_gradients(model)
    opt.step()
print("done")
