"""Shared helpers for the firmware_protocol tests: a simulator process and a small host.

Synchronisation is by polling a condition until a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from firmware_protocol import Decoder, Message, encode, open_transport
from firmware_protocol.handshake import check_reply, host_hello
from rig.processes import wait_until

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 10.0


class SimProcess:
    """``metaemg-sim orthosis`` in a subprocess with a log, a control socket and a link."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / "sim.jsonl"
        self.control_path = tmp_path / "sim.ctl"
        self.link = tmp_path / "myhand"
        cmd = [
            sys.executable,
            "-m",
            "firmware_protocol.cli",
            "orthosis",
            "--log",
            str(self.log),
            "--control",
            str(self.control_path),
            "--link",
            str(self.link),
            *args,
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.path = self.read_line(START_TIMEOUT)
        wait_until(lambda: self.find("state"), START_TIMEOUT, "the initial state event")

    def read_line(self, timeout: float) -> str:
        """The next line the simulator prints (a pty path)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            raise AssertionError(f"simulator printed nothing in {timeout} s: {self.proc.stderr.read()}")
        line = self.proc.stdout.readline().strip()
        assert line, f"simulator exited: {self.proc.stderr.read()}"
        return line

    # -- log --------------------------------------------------------------------------------------

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def find(self, event: str, after: float = -1.0, **fields: object) -> list[dict]:
        return [
            e
            for e in self.events()
            if e["event"] == event and e["t"] > after and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, event: str, timeout: float = 3.0, after: float = -1.0, **fields: object) -> dict:
        found = wait_until(lambda: self.find(event, after, **fields), timeout, f"event {event} {fields}")
        return found[0]

    # -- control ----------------------------------------------------------------------------------

    def control(self, cmd: str, **args: object) -> None:
        from firmware_protocol.simulator import send_control

        send_control(self.control_path, {"cmd": cmd, **args})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if not stream.closed:
                stream.close()


class Host:
    """A minimal blocking host: numbered frames out, every received message kept."""

    def __init__(self, url: str) -> None:
        self.link = open_transport(url)
        self.decoder = Decoder()
        self.received: list[Message] = []  # everything, in order
        self._unseen: deque[Message] = deque()  # not yet examined by wait_for
        self._seq = 0

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def send(self, cls: type[Message], **fields: int) -> Message:
        msg = cls(**fields, seq=self.next_seq())
        self.link.write(encode(msg))
        return msg

    def poll(self, timeout: float = 0.0) -> list[Message]:
        msgs = self.decoder.feed(self.link.read(timeout=timeout))
        self.received += msgs
        self._unseen.extend(msgs)
        return msgs

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 2.0, what: str = "a message") -> Message:
        """Examine messages in arrival order (each once) until one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            while self._unseen:
                msg = self._unseen.popleft()
                if predicate(msg):
                    return msg
            self.poll(timeout=0.02)
            if not self._unseen and time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def handshake(self, timeout: float = 2.0):
        self.link.write(encode(host_hello(seq=self.next_seq())))
        return self.wait_for(lambda m: check_reply(m) is not None, timeout, "the device HELLO")

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
