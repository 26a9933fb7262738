"""The coordinator's tcp wire (DESIGN.md §5), in Python's standard library plus
msgpack: one blocking socket, the hello, one round at a time, bye. Round frames
are the 32-byte-header binary frames of shared/codec.ts; every other message is
msgpack in a 0xc2 envelope. Knows nothing of torch: payloads are bytes-like."""

import socket
import struct
import time
from urllib.parse import urlparse

import msgpack

PROTOCOL_VERSION = 5
FRAME_MARKER = 0xC1
ENVELOPE_MARKER = 0xC2
PHASES = ("fwd", "bwd", "grad", "sum")
_PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}
_KIND_CONTRIBUTION = 1
_KIND_RESULT = 2
_FLAG_F32 = 1
_FLAG_EXTRA = 2
_FLAG_CHECKSUM = 4
# marker, kind, phase, flags, layer (i32), step, count, n, m (u32), checksum (f64): 32 bytes.
_HEADER = struct.Struct("<BBBBiIIIId")
HEADER_BYTES = _HEADER.size
# A result is at most this big (the coordinator's maxPayload, 256 MiB).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Bound of a welcome's joinWaitMs: MAX_TIMER_MS of shared/protocol.ts (Node's timer maximum).
_MAX_JOIN_WAIT_MS = 2**31 - 1
# Receive buffer: results of up to half of it (BN rounds: 2·C float64 values) take one recv.
_RECV_CHUNK = 64 * 1024


class SyncbnError(RuntimeError):
    """A failure of the run: `code` is a SYNCBN_ERR_* code (docs/errors.md's table); the
    message names rank, step, layer and phase where known."""

    def __init__(self, code, message, rank=None, step=None, layer=None, phase=None):
        super().__init__(message if message.startswith("SYNCBN_ERR_") else f"{code}: {message}")
        self.code = code
        self.rank = rank
        self.step = step
        self.layer = layer
        self.phase = phase


def _data_bytes(n, f32):
    return ((4 * n + 7) & ~7) if f32 else 8 * n


def encode_contribution(step, phase, layer, count, data, f32, extra=None, checksum=None):
    """A contribution frame. `data`: bytes-like holding n float32 (f32) or float64
    values, little-endian; `extra`: bytes-like of float64 values, or None."""
    data = memoryview(data).cast("B")
    size = 4 if f32 else 8
    if len(data) % size:
        raise ValueError(f"data of {len(data)} bytes is not a whole number of {size}-byte values")
    n = len(data) // size
    extra_bytes = memoryview(extra).cast("B") if extra is not None else memoryview(b"")
    m = len(extra_bytes) // 8
    flags = (_FLAG_F32 if f32 else 0) | (_FLAG_EXTRA if m > 0 else 0) | (_FLAG_CHECKSUM if checksum is not None else 0)
    header = _HEADER.pack(FRAME_MARKER, _KIND_CONTRIBUTION, _PHASE_INDEX[phase], flags, layer, step, count, n, m, checksum if checksum is not None else 0.0)
    pad = b"\0" * (_data_bytes(n, f32) - len(data))
    return b"".join((header, data, pad, extra_bytes))


def envelope(message):
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack("<BI", ENVELOPE_MARKER, len(body)) + body


def _error_from(msg):
    rank = msg.get("rank")
    return SyncbnError(str(msg.get("code", "SYNCBN_ERR_BAD_MESSAGE")), str(msg.get("message", "")), rank=rank, step=msg.get("step"), layer=msg.get("layer"), phase=msg.get("phase"))


class Result:
    """A round's result: `count`, `data` (bytes of float32 or float64 values, `f32`
    says which), `extra` (bytes of float64 values, or None)."""

    __slots__ = ("step", "phase", "layer", "count", "data", "f32", "extra")

    def __init__(self, step, phase, layer, count, data, f32, extra):
        self.step, self.phase, self.layer, self.count, self.data, self.f32, self.extra = step, phase, layer, count, data, f32, extra


class Client:
    """One worker process's connection: `Client.connect(...)` returns it admitted
    (welcome received), or raises SyncbnError with the coordinator's reason."""

    def __init__(self, sock, rank, world_size, round_timeout_s, label):
        self.sock = sock
        self.rank = rank
        self.world_size = world_size
        self.round_timeout_s = round_timeout_s
        self.label = label
        self.closed = False
        # Seconds spent between sending a contribution and receiving its result.
        self.wait_s = 0.0
        # Received bytes not yet parsed: _rbuf[_rpos:_rend]. One recv usually brings a whole
        # result frame (header and body), so a round costs one recv, not three.
        self._rbuf = bytearray(_RECV_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._rpos = self._rend = 0
        self._kernel_timeouts = False
        # The kernel's receive timeout now (s): round_timeout_s, or longer while the
        # coordinator's join window is open (until _grace_until, time.monotonic()).
        self._rcv_timeout_s = round_timeout_s
        self._grace_until = 0.0

    @classmethod
    def connect(cls, url, rank, world_size, token, conventions, connect_timeout_s=60.0, round_timeout_s=65.0):
        u = urlparse(url)
        if u.scheme != "tcp" or not u.hostname or not u.port:
            raise SyncbnError("SYNCBN_ERR_BAD_CONFIG", f"coordinator URL {url!r}: the Python client speaks the tcp wire only (tcp://HOST:PORT); start the coordinator with --wire tcp (syncbn launch does)")
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                sock = socket.create_connection((u.hostname, u.port), timeout=max(0.1, deadline - time.monotonic()))
                break
            except OSError as e:
                if time.monotonic() + 0.2 >= deadline:
                    raise SyncbnError("SYNCBN_ERR_COORDINATOR_LOST", f"cannot reach the coordinator at {url} within {connect_timeout_s:g} s ({e})", rank=rank) from None
                time.sleep(0.2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock, rank, world_size, round_timeout_s, url)
        hello = {"type": "hello", "version": PROTOCOL_VERSION, "rank": rank, "worldSize": world_size, "token": token, "conventions": conventions}
        client._send(envelope(hello))
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        msg = client._read_message("the welcome")
        if not isinstance(msg, dict) or msg.get("type") != "welcome":
            client.close()
            if isinstance(msg, dict) and msg.get("type") == "error":
                raise _error_from(msg)
            raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", f"expected a welcome from the coordinator, got {msg!r:.200}", rank=rank)
        # While the coordinator's join window is open (--join-timeout), a round may wait
        # for ranks still starting, then its deadline from their join (DESIGN.md §5).
        join_wait = msg.get("joinWaitMs")
        if isinstance(join_wait, (int, float)) and join_wait > 0:
            join_wait_s = min(float(join_wait), _MAX_JOIN_WAIT_MS) / 1000
            client._grace_until = time.monotonic() + join_wait_s
            client._use_kernel_timeouts(client.round_timeout_s + join_wait_s)
        else:
            client._use_kernel_timeouts(client.round_timeout_s)
        return client

    def _use_kernel_timeouts(self, seconds):
        """A blocking socket whose round deadline is the kernel's (SO_RCVTIMEO, SO_SNDTIMEO):
        a recv is one system call. Python's own timeouts poll() before every recv, and
        settimeout() costs an fcntl each time it is called."""
        self.sock.settimeout(None)
        tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._rcv_timeout_s = seconds
        self._kernel_timeouts = True

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except (socket.timeout, BlockingIOError):
            raise SyncbnError("SYNCBN_ERR_TIMEOUT", f"the coordinator took nothing from this rank for {self._rcv_timeout_s:g} s", rank=self.rank) from None
        except OSError as e:
            raise self._lost(f"send failed ({e})") from None

    def _timeout(self, what):
        limit = self._rcv_timeout_s if self._kernel_timeouts else self.sock.gettimeout()
        return SyncbnError("SYNCBN_ERR_TIMEOUT", f"no answer from the coordinator for {what} within {limit:g} s", rank=self.rank)

    def _recv_into(self, view, what):
        """One recv; raises on timeout (SO_RCVTIMEO gives EAGAIN on a blocking socket), error or close."""
        try:
            k = self.sock.recv_into(view)
        except (socket.timeout, BlockingIOError):
            raise self._timeout(what) from None
        except OSError as e:
            raise self._lost(f"broke ({e})") from None
        if k == 0:
            raise self._lost("closed")
        return k

    def _lost(self, why):
        return SyncbnError("SYNCBN_ERR_COORDINATOR_LOST", f"connection to the coordinator at {self.label} {why}; the coordinator died or stopped the run", rank=self.rank)

    def _recv_some(self, what):
        self._rend += self._recv_into(self._rview[self._rend :], what)

    def _recv_exact(self, n, what):
        """The next n bytes of the stream (bytearray): from _rbuf, then straight from the socket."""
        have = self._rend - self._rpos
        if have >= n:
            out = self._rbuf[self._rpos : self._rpos + n]
            self._rpos += n
            return out
        if n >= len(self._rbuf) // 2:
            # Big bodies (gradients) go into their own buffer, with no copy through _rbuf.
            out = bytearray(n)
            view = memoryview(out)
            view[:have] = self._rview[self._rpos : self._rend]
            self._rpos = self._rend = 0
            got = have
            while got < n:
                got += self._recv_into(view[got:], what)
            return out
        # Move the unparsed bytes to the front, then read until n are there.
        self._rbuf[:have] = self._rbuf[self._rpos : self._rend]  # a copy first: the ranges may overlap
        self._rpos, self._rend = 0, have
        while self._rend < n:
            self._recv_some(what)
        out = self._rbuf[:n]
        self._rpos = n
        return out

    def _read_message(self, what):
        """The next message: a decoded msgpack dict, or a Result."""
        first = self._recv_exact(1, what)[0]
        if first == ENVELOPE_MARKER:
            (length,) = struct.unpack("<I", self._recv_exact(4, what))
            if length > MAX_MESSAGE_BYTES:
                raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", f"coordinator message of {length} bytes is over the limit", rank=self.rank)
            return msgpack.unpackb(bytes(self._recv_exact(length, what)), raw=False)
        if first != FRAME_MARKER:
            raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", f"unknown first byte 0x{first:02x} from the coordinator", rank=self.rank)
        head = bytes([first]) + bytes(self._recv_exact(HEADER_BYTES - 1, what))
        _, kind, phase, flags, layer, step, count, n, m, _ = _HEADER.unpack(head)
        if kind != _KIND_RESULT or phase >= len(PHASES):
            raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", f"unexpected frame (kind {kind}, phase {phase}) from the coordinator", rank=self.rank)
        f32 = bool(flags & _FLAG_F32)
        d = _data_bytes(n, f32)
        if d + 8 * m > MAX_MESSAGE_BYTES:
            raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", "result frame over the size limit", rank=self.rank)
        body = self._recv_exact(d + 8 * m, what)
        data = body[: (4 * n if f32 else 8 * n)]
        extra = body[d:] if flags & _FLAG_EXTRA else None
        return Result(step, PHASES[phase], layer, count, data, f32, extra)

    def round(self, step, phase, layer, count, data, f32=False, extra=None, checksum=None):
        """Sends this process's part of round (step, phase, layer) and blocks until
        its result; raises SyncbnError on the coordinator's error, a closed
        connection, or no result within the round timeout."""
        if self.closed:
            raise SyncbnError("SYNCBN_ERR_COORDINATOR_LOST", "the connection to the coordinator is closed", rank=self.rank)
        what = f"step {step} {phase}" + (f" layer {layer}" if layer >= 0 else "")
        if self._grace_until and time.monotonic() >= self._grace_until:
            # The join window has closed: every later round has the plain round timeout.
            self._grace_until = 0.0
            self._use_kernel_timeouts(self.round_timeout_s)
        t0 = time.perf_counter()
        self._send(encode_contribution(step, phase, layer, count, data, f32, extra, checksum))
        while True:
            msg = self._read_message(what)
            if isinstance(msg, Result):
                if (msg.step, msg.phase, msg.layer) != (step, phase, layer):
                    raise SyncbnError("SYNCBN_ERR_ROUND_KEY", f"coordinator answered {msg.step} {msg.phase} layer {msg.layer} while waiting for {what}", rank=self.rank)
                self.wait_s += time.perf_counter() - t0
                return msg
            if isinstance(msg, dict) and msg.get("type") == "error":
                self.close()
                raise _error_from(msg)
            if isinstance(msg, dict) and msg.get("type") == "resync":
                self.close()
                raise SyncbnError("SYNCBN_ERR_WORKER_LOST", "the coordinator dropped a worker (--on-worker-loss continue); the Python client does not redo steps: run with the default abort", rank=self.rank)
            raise SyncbnError("SYNCBN_ERR_BAD_MESSAGE", f"unexpected message while waiting for {what}: {msg!r:.200}", rank=self.rank)

    def name_layers(self, names):
        """Names the BN layers (names[i]: the layer of rounds with layer id i), for
        the dashboard and metrics.jsonl; the coordinator keeps the first list."""
        self._send(envelope({"type": "layers", "names": [str(n)[:200] for n in names]}))

    def bye(self):
        """Tells the coordinator this worker finished normally, then closes."""
        if self.closed:
            return
        try:
            self.sock.sendall(envelope({"type": "bye"}))
        except OSError:
            pass
        self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
