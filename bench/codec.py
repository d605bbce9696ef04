"""Codec benchmark: how long encoding and decoding one frame takes, and decoder throughput.

    python -m bench.codec            # human-readable table
    python -m bench.codec --json     # the same, the last line is one JSON document

Each figure is the median and 99th percentile over many single-call timings (perf_counter_ns),
after a warm-up; throughput feeds a long stream of mixed frames in 4 KiB chunks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from firmware_protocol.codec import Decoder, decode, encode
from firmware_protocol.messages import Command, Heartbeat, Intent, Status, StatusFlag


def _sample(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(n, 500)):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000.0)
    return out


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"median_us": round(statistics.median(ordered), 2), "p99_us": round(p99, 2)}


def run(n: int = 20000) -> dict:
    command = Command(int(Intent.OPEN), 500, seq=1234)
    status = Status(2, int(StatusFlag.SESSION | StatusFlag.MOVING), 250, 0, 123456, 1234, 480, 0, seq=99)
    wire_cmd, wire_status = encode(command), encode(status)
    decoder = Decoder()
    results: dict[str, Any] = {
        "encode_command": _summary(_sample(lambda: encode(command), n)),
        "encode_status": _summary(_sample(lambda: encode(status), n)),
        "decode_command": _summary(_sample(lambda: decode(wire_cmd), n)),
        "decode_status": _summary(_sample(lambda: decode(wire_status), n)),
        "decoder_feed_command": _summary(_sample(lambda: decoder.feed(wire_cmd), n)),
    }
    stream = b"".join(encode(m) for m in (command, status, Heartbeat(5000, seq=7))) * 20000
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    decoder = Decoder()
    t0 = time.perf_counter()
    count = sum(len(decoder.feed(chunk)) for chunk in chunks)
    elapsed = time.perf_counter() - t0
    assert count == 60000 and decoder.error_count == 0
    results["decoder_throughput"] = {
        "frames_per_s": round(count / elapsed),
        "mbytes_per_s": round(len(stream) / elapsed / 1e6, 2),
        "bytes": len(stream),
    }
    results["python"] = platform.python_version()
    results["machine"] = platform.machine()
    results["samples"] = n
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description="firmware_protocol codec benchmark")
    parser.add_argument("--json", action="store_true", help="print one JSON document as the last line")
    parser.add_argument("-n", type=int, default=20000, help="timed calls per figure")
    args = parser.parse_args(argv)
    results = run(args.n)
    print(f"{'operation':<24} {'median us':>10} {'p99 us':>10}")
    for name, r in results.items():
        if isinstance(r, dict) and "median_us" in r:
            print(f"{name:<24} {r['median_us']:>10.2f} {r['p99_us']:>10.2f}")
    tp = results["decoder_throughput"]
    print(
        f"decoder throughput: {tp['frames_per_s']:,} frames/s, {tp['mbytes_per_s']} MB/s "
        f"(Python {results['python']}, {results['machine']})"
    )
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
