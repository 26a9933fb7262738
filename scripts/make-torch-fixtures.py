#!/usr/bin/env python3
"""PyTorch-computed training fixtures for test/torch-parity.test.ts.

Builds syncbn's models in PyTorch (cnn now; resnet:1 as issue 12 defines it, the
CIFAR ResNet), writes a tiny IDX data set, the initial weights as safetensors,
and the weights after k SGD steps in float64, as ONE global batch in the order
`syncbn train --shuffle off` gives W workers x B samples: `sync` (BN over the
global batch) and `local` (each rank's slice through its own BN statistics,
gradients of the global mean loss, rank 0's running statistics).

Run by hand with PyTorch installed (torch 1.13 has no safetensors package: the
few lines of format code are here):  /usr/bin/python3 scripts/make-torch-fixtures.py
Not a test: it only writes test/fixtures/torch/.
"""

import gzip
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "torch")
WORKERS, BATCH, STEPS = 4, 4, 3
TRAIN, TEST, SIDE, CLASSES = 64, 16, 28, 10
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4  # syncbn's defaults; SGD as torch.optim.SGD
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
MEAN, STD = 0.286, 0.353  # syncbn maps IDX pixels to float32((v/255 - MEAN)/STD)

# ---- safetensors, per the format's specification ---------------------------------
DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}
ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]


def save_safetensors(path, arrays, metadata):
    """arrays: name -> numpy array. Layout as the reference writer: widest dtype first, then by name."""
    names = sorted(arrays, key=lambda n: (-ORDER.index(DTYPES[arrays[n].dtype]), n))
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for n in names:
        b = np.ascontiguousarray(arrays[n]).astype(arrays[n].dtype.newbyteorder("<")).tobytes()
        header[n] = {"dtype": DTYPES[arrays[n].dtype], "shape": list(arrays[n].shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- the models -------------------------------------------------------------------
class Cnn(nn.Module):
    """syncbn's `cnn` (worker/nn/model.ts), attribute names = its layer names."""

    def __init__(self, classes=CLASSES):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, BN_EPS, BN_MOMENTUM)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32, BN_EPS, BN_MOMENTUM)
        self.fc1, self.bn3 = nn.Linear(32 * 7 * 7, 64), nn.BatchNorm1d(64, BN_EPS, BN_MOMENTUM)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.bn3(self.fc1(x.flatten(1)))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """`resnet:N` as issue 12 defines it (He et al. 2016, 4.2): 3 stages of N BasicBlocks, 16/32/64 channels."""

    def __init__(self, n, cin=1, classes=CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, BN_EPS, BN_MOMENTUM)
        stages, c = [], 16
        for i, cout in enumerate([16, 32, 64]):
            blocks = [BasicBlock(c, cout, 1 if i == 0 else 2)] + [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ---- data -------------------------------------------------------------------------
def idx_bytes(magic, dims, data):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data.tobytes()


def write_gz(path, payload):
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(payload)


def make_data(rng):
    """Blocky images (a 7x7 random grid, 4x4 blocks: small gzipped) with labels cycling 0..9."""
    os.makedirs(os.path.join(ROOT, "data"), exist_ok=True)
    splits = {}
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        grid = rng.integers(0, 256, size=(count, 7, 7), dtype=np.uint8)
        images = grid.repeat(4, axis=1).repeat(4, axis=2)
        labels = rng.integers(0, CLASSES, size=count, dtype=np.uint8)
        write_gz(os.path.join(ROOT, "data", f"{prefix}-images-idx3-ubyte.gz"), idx_bytes(0x803, [count, SIDE, SIDE], images))
        write_gz(os.path.join(ROOT, "data", f"{prefix}-labels-idx1-ubyte.gz"), idx_bytes(0x801, [count], labels))
        splits[prefix] = (images, labels)
    images, labels = splits["train"]
    x = ((images.astype(np.float64) / 255 - MEAN) / STD).astype(np.float32).astype(np.float64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def rank_indices(rank, step):
    """syncbn --shuffle off: rank k's t-th batch holds samples k + W(tB + j), j < B."""
    return [rank + WORKERS * (step * BATCH + j) for j in range(BATCH)]


def check_order_is_pytorchs():
    """rank_indices is what DistributedSampler(shuffle=False, drop_last=True) + DataLoader(drop_last=True) yields."""
    from torch.utils.data import DataLoader, DistributedSampler

    for rank in range(WORKERS):
        sampler = DistributedSampler(range(TRAIN), num_replicas=WORKERS, rank=rank, shuffle=False, drop_last=True)
        batches = [b.tolist() for b in DataLoader(range(TRAIN), batch_size=BATCH, sampler=sampler, drop_last=True)]
        assert batches[:STEPS] == [rank_indices(rank, t) for t in range(STEPS)], (rank, batches[:STEPS])


# ---- training ---------------------------------------------------------------------
def bn_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train(model, x, y, norm):
    """STEPS of SGD on the global batch of W x B samples; norm 'sync' or 'local'."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    bns = bn_modules(model)
    # local: every rank's BN layers keep their own running statistics (their own tensors, updated in place
    # by BN's forward), put in place around that rank's slice.
    buffers = [[(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns] for _ in range(WORKERS)]

    def use_buffers(r):
        for m, (mean, var, n) in zip(bns, buffers[r]):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, n

    model.train()
    for t in range(STEPS):
        opt.zero_grad()
        if norm == "sync":
            idx = [i for r in range(WORKERS) for i in rank_indices(r, t)]
            logits = model(x[idx])
            targets = y[idx]
        else:
            outs = []
            for r in range(WORKERS):
                use_buffers(r)
                outs.append(model(x[rank_indices(r, t)]))
            logits = torch.cat(outs)
            targets = torch.cat([y[rank_indices(r, t)] for r in range(WORKERS)])
        F.cross_entropy(logits, targets).backward()  # mean over the global batch, as syncbn
        opt.step()
    if norm == "local":
        use_buffers(0)  # rank 0's running statistics, as syncbn writes them
    return model


def state_arrays(model, dtype=np.float32):
    return {k: (v.numpy().astype(np.int64) if k.endswith("num_batches_tracked") else v.detach().numpy().astype(dtype)) for k, v in model.state_dict().items()}


def make_fixture(name, make_model, init_dtype, params_only, x, y):
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = make_model().double()
    # Round the initial weights to the init file's dtype, so both sides start from exactly its values.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16 if init_dtype == np.float16 else torch.float32).double())
    init = state_arrays(model, init_dtype)
    if params_only:
        init = {k: v for k, v in init.items() if k in dict(model.named_parameters())}
    meta = {"format": "pt", "made_by": "scripts/make-torch-fixtures.py"}
    save_safetensors(os.path.join(out, "init.safetensors"), init, meta)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    for norm in ("sync", "local"):
        model.load_state_dict(initial_state)
        train(model, x, y, norm)
        save_safetensors(os.path.join(out, f"expected-{norm}.safetensors"), state_arrays(model), meta)
    settings = {"workers": WORKERS, "batch": BATCH, "steps": STEPS, "lr": LR, "momentum": MOMENTUM, "weightDecay": WEIGHT_DECAY,
                "bnEps": BN_EPS, "bnMomentum": BN_MOMENTUM, "trainSize": TRAIN, "testSize": TEST}
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters -> {out}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    check_order_is_pytorchs()
    x, y = make_data(np.random.default_rng(12))
    # cnn: parameters only, as float16 (the running statistics start at PyTorch's 0 and 1; F16 is read and widened).
    make_fixture("cnn", Cnn, np.float16, True, x, y)
    # resnet:1: PyTorch's default init, the full state_dict in float32.
    make_fixture("resnet1", lambda: ResNet(1), np.float32, False, x, y)
