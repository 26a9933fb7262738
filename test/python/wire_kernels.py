"""Checks for test/torch-wire.test.ts, run without a coordinator: syncbn.wire's
client against a scripted tcp peer in this process (TCP_NODELAY, buffered reads
of results that arrive together or byte by byte, the kernel round deadline), and
syncbn.bn_kernels' fast functions against their naive float64 twins. Prints one
JSON line of measured facts; the test asserts on them."""

import json
import socket
import struct
import sys
import threading
import time

import msgpack
import torch

from syncbn import bn_kernels as K
from syncbn import wire


def result_frame(step, phase, layer, count, values):
    """A result frame (kind 2) of float64 values, as the coordinator sends it."""
    data = struct.pack(f"<{len(values)}d", *values)
    head = struct.pack("<BBBBiIIIId", wire.FRAME_MARKER, 2, wire.PHASES.index(phase), 0, layer, step, count, len(values), 0, 0.0)
    return head + data


def read_envelope(conn):
    head = b""
    while len(head) < 5:
        head += conn.recv(5 - len(head))
    (length,) = struct.unpack("<I", head[1:])
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return msgpack.unpackb(body, raw=False)


def read_frame(conn):
    head = b""
    while len(head) < wire.HEADER_BYTES:
        head += conn.recv(wire.HEADER_BYTES - len(head))
    n = struct.unpack("<BBBBiIIIId", head)[7]
    body = b""
    while len(body) < 8 * n:
        body += conn.recv(8 * n - len(body))
    return head, body


def peer(server, script):
    """Accepts one client, answers its hello with a welcome, then runs script(conn)."""
    conn, _ = server.accept()
    with conn:
        assert read_envelope(conn)["type"] == "hello"
        conn.sendall(wire.envelope({"type": "welcome", "rank": 0}))
        script(conn)


def with_peer(script, round_timeout_s=30.0):
    server = socket.create_server(("127.0.0.1", 0))
    t = threading.Thread(target=peer, args=(server, script), daemon=True)
    t.start()
    client = wire.Client.connect(f"tcp://127.0.0.1:{server.getsockname()[1]}", 0, 1, "tok", {}, 10.0, round_timeout_s)
    return client, t, server


def wire_checks():
    out = {}

    # Two results sent in one write, then one sent a byte at a time.
    def script(conn):
        read_frame(conn)
        read_frame(conn)
        conn.sendall(result_frame(0, "fwd", 0, 8, [1.0, 2.0]) + result_frame(0, "fwd", 1, 8, [3.0, 4.0, 5.0]))
        read_frame(conn)
        for b in result_frame(0, "bwd", 1, 8, [6.0]):
            conn.sendall(bytes([b]))
            time.sleep(0.001)
        read_envelope(conn)  # bye

    client, t, server = with_peer(script)
    out["nodelay"] = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    # The peer answers only after both contributions: send both, then read both results from one recv.
    client._send(wire.encode_contribution(0, "fwd", 0, 8, struct.pack("<2d", 0, 0), False))
    client._send(wire.encode_contribution(0, "fwd", 1, 8, struct.pack("<3d", 0, 0, 0), False))
    got = [client._read_message("r0"), client._read_message("r1")]
    out["together"] = [list(struct.unpack(f"<{len(r.data) // 8}d", r.data)) for r in got]
    r = client.round(0, "bwd", 1, 8, struct.pack("<d", 0))
    out["bytewise"] = list(struct.unpack("<d", r.data))
    client.bye()
    t.join(5)
    server.close()

    # A peer that never answers: the round ends at the client's deadline with SYNCBN_ERR_TIMEOUT.
    gate = threading.Event()
    client, t, server = with_peer(lambda conn: gate.wait(10), round_timeout_s=0.5)
    t0 = time.perf_counter()
    try:
        client.round(0, "fwd", 0, 8, struct.pack("<2d", 0, 0))
        out["timeout"] = None
    except wire.SyncbnError as e:
        out["timeout"] = {"code": e.code, "message": str(e), "seconds": time.perf_counter() - t0}
    gate.set()
    client.close()
    server.close()
    return out


def kernel_checks():
    """Largest relative difference fast vs naive per function, over shapes with |mean| ≫ std, 2-D to 5-D, float64 x."""
    torch.manual_seed(0)
    worst = {"moments": 0.0, "y": 0.0, "sums": 0.0, "dx": 0.0}
    torch_y = 0.0  # PyTorch's float32 BN on the same inputs, for scale
    cases = [((8, 16, 6, 6), 3.0, 5.0, torch.float32), ((5, 7), 2.0, 1e4, torch.float32), ((3, 4, 5), 0.01, 300.0, torch.float32),
             ((2, 3, 2, 2, 2), 1.0, 0.0, torch.float32), ((4, 6, 3, 3), 1.0, 50.0, torch.float64), ((2, 3, 2, 1), 1.0, 0.0, torch.float32)]

    def rel(a, b):
        a, b = torch.as_tensor(a).to(torch.float64), b.to(torch.float64)
        return ((a - b).abs().max() / (b.abs().max() + 1e-300)).item()

    for shape, scale, offset, dtype in cases:
        x = (torch.randn(*shape, dtype=torch.float64) * scale + offset).to(dtype)
        dy = torch.randn(*shape, dtype=dtype)
        c = shape[1]
        n = x.numel() // c
        w, b = torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)
        mean, m2 = K.local_moments(x)
        mean_n, m2_n = K.local_moments_naive(x)
        worst["moments"] = max(worst["moments"], rel(mean, mean_n), rel(m2, m2_n) if n > 1 else 0.0)
        var = m2 / n
        worst["y"] = max(worst["y"], rel(K.normalize(x, mean, var, w, b, 1e-5), K.normalize_naive(x, mean, var, w, b, 1e-5)))
        s1, s2 = K.backward_sums(dy, x, mean, var, 1e-5)
        s1n, s2n = K.backward_sums_naive(dy, x, mean, var, 1e-5)
        worst["sums"] = max(worst["sums"], rel(s1, s1n), rel(s2, s2n))
        worst["dx"] = max(worst["dx"], rel(K.input_grad(dy, x, mean, var, w, 1e-5, s1, s2, n), K.input_grad_naive(dy, x, mean, var, w, 1e-5, s1, s2, n)))
        worst["dx"] = max(worst["dx"], rel(K.input_grad(dy, x, mean, var, None, 1e-5, s1, s2, n), K.input_grad_naive(dy, x, mean, var, None, 1e-5, s1, s2, n)))
        # SyncBatchNorm computes the coefficients once in forward and hands them to both: the same bits.
        co = K.coefficients(x, mean, var, w, 1e-5)
        assert torch.equal(K.normalize(x, mean, var, w, b, 1e-5, co), K.normalize(x, mean, var, w, b, 1e-5))
        assert torch.equal(K.input_grad(dy, x, mean, var, None, 1e-5, s1, s2, n, co), K.input_grad(dy, x, mean, var, w, 1e-5, s1, s2, n))
        if dtype == torch.float32 and n > 1:
            torch_y = max(torch_y, rel(torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5), K.normalize_naive(x, mean, var, w, b, 1e-5)))
    worst["torchFloat32Y"] = torch_y
    return worst


def main():
    print(json.dumps({"wire": wire_checks(), "kernels": kernel_checks()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
