"""Fuzzing the parsers that read untrusted input: only the project's own typed errors, never a
crash (any other exception) and never a hang.

    python -m bench.fuzz                         # 1e6 decoder inputs, 2e4 files per loader
    python -m bench.fuzz --decoder 1e5 --files 2000 --seed 7 --json
    python -m bench.fuzz --utf8                  # mutated files kept valid UTF-8
    python -m bench.fuzz --control 1e5           # the daemon's control socket (default 1e4)

Targets and what each may do with a bad input:

- ``decoder``: ``firmware_protocol.Decoder.feed`` (random bytes, and valid frames mutated: bit
  flips, byte insertions/deletions, truncation, splices, stray or missing delimiters, fed in random
  chunkings) must never raise; every message it returns re-encodes to a frame that decodes to the
  same message; ``pending`` stays bounded. ``decode(one frame)`` may raise only ``FrameError``.
- ``config``: ``controller.config.load`` on mutated YAML files: a ``Config`` or ``ConfigError``.
- ``recording``: ``metalearn.recording.read_recording`` on mutated CSV files: a ``Recording`` or
  ``DataError``.
- ``collection``: ``metalearn.tasks.load_collection`` on mutated JSON files: a list or
  ``DataError``.
- ``control``: a real ``myhand-controller`` process (no armband stream, no orthosis) and its
  control socket, sent valid requests mutated at the byte level, random JSON values and random
  bytes (``stop`` excluded, every one under the 64 kB limit): every request must be answered
  within ``--hang-s`` and the daemon must stay alive.

An input that takes longer than ``--hang-s`` (default 1 s) counts as a hang. The first few
failures are printed with a reproducer (the seed and the input's index, and the input as hex).
The same generators drive tests/test_fuzz.py with fewer inputs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """What a fuzzing run found."""

    target: str
    inputs: int = 0
    accepted: int = 0  # inputs parsed without an error (for the decoder: frames decoded)
    typed_errors: int = 0  # inputs refused with the project's own error (decoder: counted errors)
    crashes: list[str] = field(default_factory=list)  # other exceptions or broken invariants
    hangs: list[str] = field(default_factory=list)
    max_s: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.hangs

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "typed_errors": self.typed_errors,
            "crashes": len(self.crashes),
            "hangs": len(self.hangs),
            "max_ms": round(self.max_s * 1000, 3),
            "seconds": round(self.seconds, 2),
            "first_failures": (self.crashes + self.hangs)[:3],
        }


# -- mutation --------------------------------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x01", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff\xff\xff"]


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """``data`` with 1-4 random byte-level mutations."""
    buf = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip one bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # replace one byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 3 and buf:  # delete a span
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # an interesting constant
            buf[pos:pos] = rng.choice(INTERESTING)
        elif op == 5 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 6 and len(buf) > 2:  # duplicate a span
            a = rng.randrange(len(buf))
            b = min(len(buf), a + rng.randint(1, 16))
            buf[pos:pos] = buf[a:b]
        elif op == 7 and buf:  # swap two bytes
            i, j = rng.randrange(len(buf)), rng.randrange(len(buf))
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf)


def _chunks(data: bytes, rng: random.Random) -> Iterator[bytes]:
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 16, 64, len(data)))
        yield data[i : i + n]
        i += n


def _timed(result: Result, hang_s: float, label: Callable[[], str], fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    result.max_s = max(result.max_s, dt)
    if dt > hang_s:
        result.hangs.append(f"{label()}: took {dt:.2f} s")


def _crash(result: Result, label: str, exc: BaseException) -> None:
    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    result.crashes.append(f"{label}: {tb}")


# -- the frame decoder ------------------------------------------------------------------------------


def _valid_frames() -> list[bytes]:
    """Every message of the golden vectors, and the invalid ones, as wire bytes."""
    from firmware_protocol.vectors import generate

    vectors = generate()
    return [bytes.fromhex(v["wire"]) for v in vectors["frames"] + vectors["invalid"]]


def decoder_inputs(seed: int, n: int) -> Iterator[bytes]:
    """``n`` inputs: mostly mutated streams of valid frames, some random bytes."""
    rng = random.Random(seed)
    frames = _valid_frames()
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        elif kind < 0.2:  # long runs without a delimiter (the too_long path)
            yield bytes(rng.randrange(1, 256) for _ in range(rng.randint(200, 700))) + b"\x00" * rng.randint(0, 1)
        else:
            stream = b"".join(rng.choice(frames) for _ in range(rng.randint(1, 4)))
            yield mutate(stream, rng)


def fuzz_decoder(n: int, seed: int = 0, hang_s: float = 1.0) -> Result:
    from firmware_protocol import Decoder, FrameError, decode, encode
    from firmware_protocol.codec import MAX_ENCODED
    from firmware_protocol.messages import Message

    result = Result("decoder")
    rng = random.Random(seed + 1)
    decoder = Decoder()  # one long-lived decoder, as on the link: it must resynchronise
    t_start = time.perf_counter()
    for i, data in enumerate(decoder_inputs(seed, n)):
        result.inputs += 1
        errors_before = decoder.error_count

        def run(data=data, i=i):
            try:
                for chunk in _chunks(data, rng):
                    for msg in decoder.feed(chunk):
                        if not isinstance(msg, Message) or decode(encode(msg)) != msg:
                            result.crashes.append(f"seed {seed} input {i} ({data.hex()}): {msg!r} does not round-trip")
                        result.accepted += 1
                if decoder.pending > MAX_ENCODED:
                    result.crashes.append(f"seed {seed} input {i}: pending {decoder.pending} > {MAX_ENCODED}")
            except Exception as exc:
                _crash(result, f"seed {seed} input {i} ({data.hex()}) Decoder.feed", exc)
            # the one-frame decoder on the same bytes: FrameError only
            try:
                decode(data)
            except FrameError:
                pass
            except Exception as exc:
                _crash(result, f"seed {seed} input {i} ({data.hex()}) decode", exc)

        def label(i: int = i) -> str:
            return f"seed {seed} input {i}"

        _timed(result, hang_s, label, run)
        result.typed_errors += decoder.error_count - errors_before
        if i % 64 == 63:
            decoder.feed(b"\x00")  # a delimiter now and then, as line noise would end
    result.seconds = time.perf_counter() - t_start
    return result


# -- file loaders -----------------------------------------------------------------------------------


def _fuzz_files(
    target: str,
    seeds: list[bytes],
    suffix: str,
    load: Callable[[Path], object],
    allowed: tuple[type[BaseException], ...],
    n: int,
    seed: int,
    hang_s: float,
    utf8: bool = False,
) -> Result:
    result = Result(target)
    rng = random.Random(seed)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        path = Path(tmp) / f"input{suffix}"
        for i in range(n):
            base = rng.choice(seeds)
            data = (
                mutate(base, rng, rng.choice((1, 1, 2, 4, 16)))
                if rng.random() < 0.95
                else bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
            )
            if utf8:  # keep the text valid UTF-8 (to look past a known encoding problem)
                data = data.decode("utf-8", "replace").encode("utf-8")
            path.write_bytes(data)
            result.inputs += 1

            def run(data=data, i=i):
                try:
                    load(path)
                    result.accepted += 1
                except allowed:
                    result.typed_errors += 1
                except Exception as exc:
                    _crash(result, f"seed {seed} input {i} ({data[:300].hex()})", exc)

            def label(i: int = i) -> str:
                return f"seed {seed} input {i}"

            _timed(result, hang_s, label, run)
    result.seconds = time.perf_counter() - t_start
    return result


def config_seeds() -> list[bytes]:
    return [
        (REPO / "configs" / "controller.yaml").read_bytes(),
        b"policy:\n  vote: 5\n  threshold: 0.5\nserial:\n  port: /dev/myhand\n  ttl_ms: 300\n",
        b"lsl:\n  name: MyHand-EMG\n  type: EMG\nmonitor:\n  endpoint: tcp://127.0.0.1:5556\n",
        b"model:\n  path: null\n  watch: true\nlogging:\n  level: info\n",
    ]


def fuzz_config(n: int, seed: int = 0, hang_s: float = 1.0, utf8: bool = False) -> Result:
    from controller.config import load
    from metaemg.errors import ConfigError

    return _fuzz_files("config", config_seeds(), ".yaml", load, (ConfigError,), n, seed, hang_s, utf8)


def recording_seeds() -> list[bytes]:
    """Small valid recordings in the research CSV layout (with and without the index column)."""
    import numpy as np

    from metalearn.recording import Recording, write_recording

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, index in enumerate((True, False)):
            rng = np.random.default_rng(k)
            n = 12
            rec = Recording(
                np.arange(n) / 100.0, rng.integers(0, 1000, (n, 8)).astype(float), np.repeat([0, 1, 0, 2], 3)
            )
            path = write_recording(Path(tmp) / f"r{k}.csv", rec, index_column=index)
            out.append(path.read_bytes())
    return out


def fuzz_recording(n: int, seed: int = 0, hang_s: float = 1.0, utf8: bool = False) -> Result:
    from metaemg.errors import DataError
    from metalearn.recording import read_recording

    return _fuzz_files("recording", recording_seeds(), ".csv", read_recording, (DataError,), n, seed, hang_s, utf8)


def collection_seeds() -> list[bytes]:
    return [
        b'[\n  {"session": "s01", "condition": "rorcr"},\n  {"session": "s02", "condition": "dynamic"}\n]\n',
        b'[{"session": "Male13", "condition": "Test0"}]',
        b"[]",
    ]


def fuzz_collection(n: int, seed: int = 0, hang_s: float = 1.0, utf8: bool = False) -> Result:
    from metaemg.errors import DataError
    from metalearn.tasks import load_collection

    return _fuzz_files("collection", collection_seeds(), ".json", load_collection, (DataError,), n, seed, hang_s, utf8)


# -- command line -----------------------------------------------------------------------------------


# -- the daemon's control socket ---------------------------------------------------------------------

CONTROL_SEEDS = [
    {"cmd": "status"},
    {"cmd": "pause"},
    {"cmd": "resume"},
    {"cmd": "clear"},
    {"cmd": "reload"},
    {"cmd": "reload", "path": "/nonexistent/model.onnx"},
    {"cmd": "reload", "path": "relative.onnx"},
    {"cmd": "cue", "cue": {"cue": "open", "index": 2, "cycle": 1, "remaining_s": 1.5}},
    {"cmd": "status", "extra": [1, 2, {"a": None}]},
    {"cmd": 7},
    [],
    "status",
    1e308,
    {"cmd": "dance"},
]


def control_inputs(seed: int, n: int) -> Iterator[bytes]:
    """Mutated valid requests, random JSON values and random bytes; never a ``stop`` request."""
    from controller.control import MAX_REQUEST

    rng = random.Random(seed)
    seeds = [json.dumps(s).encode() for s in CONTROL_SEEDS]
    produced = 0
    while produced < n:
        kind = rng.random()
        if kind < 0.1:  # valid requests in between: the daemon must still answer them
            data = rng.choice(seeds)
        elif kind < 0.35:
            data = mutate(rng.choice(seeds), rng, rounds=1)
        elif kind < 0.7:
            data = mutate(rng.choice(seeds), rng)
        elif kind < 0.72:  # deep nesting: '[' * n, or {"cmd": ..., "cue": [[[...]]]}
            depth = rng.randint(9, 30000)
            data = (
                b"[" * depth + b"]" * depth
                if rng.random() < 0.5
                else b'{"cmd": "cue", "cue": ' + b"[" * depth + b"]" * depth + b"}"
            )
        elif kind < 0.85:
            data = json.dumps(_random_json(rng, rng.randint(0, 12))).encode()
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        try:
            if json.loads(data).get("cmd") == "stop":
                continue
        except (ValueError, AttributeError, RecursionError, UnicodeDecodeError):
            pass
        if len(data) < MAX_REQUEST:
            produced += 1
            yield data


def _random_json(rng: random.Random, depth: int):
    r = rng.random()
    if depth <= 0 or r < 0.3:
        return rng.choice(
            [
                None,
                True,
                False,
                rng.randint(-(2**40), 2**40),
                rng.random() * 1e6,
                "",
                "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 12))),
                "status",
                "pause",
                "reload",
                "cue",
            ]
        )
    if r < 0.65:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    obj = {rng.choice(["cmd", "path", "cue", "x", ""]): _random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}
    if rng.random() < 0.5:
        obj["cmd"] = rng.choice(["status", "pause", "resume", "reload", "clear", "cue", "nope"])
    return obj


def fuzz_control(n: int, seed: int = 0, hang_s: float = 1.0) -> Result:
    """``n`` control requests (:func:`control_inputs`) to a real daemon, each answered in
    ``hang_s`` with a JSON object that has ``ok``, or the daemon crashed or hung."""
    import zmq

    result = Result("control")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/run/control.sock"
        proc = _fuzzed_daemon(tmp, endpoint)
        assert proc.stderr is not None  # stderr=PIPE
        ctx = zmq.Context()
        sock = None
        try:
            if not _started(proc, endpoint, result):
                return result
            for i, data in enumerate(control_inputs(seed, n)):
                if sock is None:
                    sock = ctx.socket(zmq.REQ)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(endpoint)
                sock, go_on = _ask(result, sock, proc, data, f"seed {seed} input {i}", hang_s)
                if not go_on:
                    break
            if proc.poll() is None:
                proc.terminate()
                if proc.wait(10) != 0:
                    result.crashes.append(f"the daemon exited {proc.returncode} after SIGTERM")
        finally:
            if sock is not None:
                sock.close(0)
            ctx.term()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _fuzzed_daemon(tmp: str, endpoint: str):
    """A real daemon on the packaged model, with no armband and no orthosis: only its control socket matters."""
    import os
    import subprocess
    import uuid

    from metaemg.modelfile import default_model_path

    argv = [sys.executable, "-m", "controller", "--lsl-stream", f"fuzz-{uuid.uuid4().hex[:8]}"]
    argv += ["--serial-port", str(Path(tmp) / "no-orthosis"), "--model", str(default_model_path())]
    argv += ["--monitor", f"ipc://{tmp}/monitor.sock", "--control", endpoint]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)


def _started(proc, endpoint: str, result: Result, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not Path(endpoint[len("ipc://") :]).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            result.crashes.append(f"the daemon did not start: {proc.stderr.read()[-400:]}")
            return False
        time.sleep(0.05)  # polling for a file another process creates, with a deadline
    return True


def _ask(result: Result, sock, proc, data: bytes, where: str, hang_s: float):
    """One request and its answer, counted in ``result``: ``(the socket, or None after a hang;
    whether to go on)``."""
    import json

    result.inputs += 1
    t0 = time.perf_counter()
    sock.send(data)
    answered = sock.poll(int(hang_s * 1000))
    result.max_s = max(result.max_s, time.perf_counter() - t0)
    if proc.poll() is not None:
        result.crashes.append(
            f"{where} ({data[:80].hex()}): the daemon exited {proc.returncode}: {proc.stderr.read()[-400:]}"
        )
        return sock, False
    if not answered:
        result.hangs.append(f"{where} ({data[:80].hex()}): no answer in {hang_s:g} s")
        sock.close(0)
        return None, True
    try:
        answer = json.loads(sock.recv())
    except ValueError as exc:
        result.crashes.append(f"{where}: the answer is not JSON: {exc}")
        return sock, True
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        result.crashes.append(f"{where}: the answer has no ok: {answer!r:.200}")
    elif answer["ok"]:
        result.accepted += 1
    else:
        result.typed_errors += 1
    return sock, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--decoder", type=float, default=1e6, help="decoder inputs (default 1e6)")
    p.add_argument("--files", type=float, default=2e4, help="inputs per file loader (default 2e4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-s", type=float, default=1.0, help="an input slower than this is a hang")
    p.add_argument("--utf8", action="store_true", help="keep mutated files valid UTF-8")
    p.add_argument("--control", type=float, default=1e4, help="control-socket requests (default 1e4)")
    p.add_argument("--json", action="store_true", help="end with one JSON document")
    args = p.parse_args(argv)
    results = [fuzz_decoder(int(args.decoder), args.seed, args.hang_s)]
    for fn in (fuzz_config, fuzz_recording, fuzz_collection):
        results.append(fn(int(args.files), args.seed, args.hang_s, args.utf8))
    results.append(fuzz_control(int(args.control), args.seed, args.hang_s))
    print(
        f"{'target':<11} {'inputs':>9} {'accepted':>9} {'typed err':>10} {'crashes':>8} {'hangs':>6} "
        f"{'max ms':>8} {'s':>7}"
    )
    for r in results:
        print(
            f"{r.target:<11} {r.inputs:>9} {r.accepted:>9} {r.typed_errors:>10} {len(r.crashes):>8} "
            f"{len(r.hangs):>6} {r.max_s * 1000:>8.2f} {r.seconds:>7.1f}"
        )
        for line in (r.crashes + r.hangs)[:5]:
            print(f"  {line[:400]}")
    ok = all(r.ok for r in results)
    print("no crash, no hang" if ok else "FAILURES above")
    if args.json:
        print(json.dumps({"seed": args.seed, "ok": ok, "results": [r.to_dict() for r in results]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
