"""Helpers for the fault-injection suite (tests/test_faults.py) and the benchmarks in bench/.

Built on tests/controller_helpers.py (real processes, deadlines instead of sleeps):

- :class:`Rig`: one orthosis simulator on a pty behind a symlink, one replay LSL outlet (in this
  process, a thread) with a unique stream name, one daemon subprocess and a monitor subscriber,
  up and ``running``; :meth:`Rig.close` stops all of them.
- small queries on the simulator log: commands and STOPs after a time, the last device state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from controller_helpers import Daemon, Sim, Sub, unique_name, wait_until

from firmware_protocol.messages import StopReason

STOP_SIGNAL_LOST = StopReason.SIGNAL_LOST
STOP_HOST_SHUTDOWN = StopReason.HOST_SHUTDOWN
STOP_HOST_ERROR = StopReason.HOST_ERROR


def default_model() -> Path:
    """The packaged default model (no torch needed): it rejects most windows, so its commands are
    mostly ``relax``, but a COMMAND goes out for every window (``serial.send_every_decision``)."""
    from metaemg.modelfile import default_model_path

    return default_model_path()


class Rig:
    """Simulator + replay outlet + daemon + monitor subscriber, all real (see the module doc)."""

    def __init__(
        self,
        tmp: Path,
        model: Path,
        emg: np.ndarray,
        *,
        rate: float = 200.0,
        udev: Path | None = None,
        daemon_args: tuple[str, ...] = (),
        sim_args: tuple[str, ...] = (),
        wait_running: float = 20.0,
    ) -> None:
        from rig.replay import Replay

        self.tmp = tmp
        self.model = model
        self.emg = np.array(emg, dtype=np.float32)  # our own copy: tests may edit future rows
        self.rate = rate
        self.name = unique_name("fault-emg")
        self.sim = self.replay = self.daemon = self.sub = None
        try:
            self.sim = Sim(tmp, *sim_args)
            self.replay = Replay(self.emg, None, rate, name=self.name, loop=True).start()
            self.port = str(self.sim.link)
            if udev is not None:  # a symlink of our own, moved by the test as udev would
                os.symlink(self.sim.pty, udev)
                self.port = str(udev)
            self.daemon = Daemon(tmp, stream=self.name, port=self.port, model=model, extra=daemon_args)
            self.sub = Sub(self.daemon.monitor)
            if wait_running:
                self.wait_state("running", wait_running)
                self.wait_command_after(time.monotonic(), 3.0)
        except BaseException:
            self.close()
            raise

    # -- the daemon ------------------------------------------------------------------------------

    def status(self) -> dict:
        return wait_until(self.daemon.status, 5, "a status answer")

    def wait_state(self, state: str, timeout: float) -> dict:
        def check():
            s = self.daemon.status()
            return s if s is not None and s["state"] == state else None

        return wait_until(check, timeout, f"daemon state {state!r}")

    def state_event(self, state: str, after: float, timeout: float) -> dict:
        """The monitor's ``event`` for entering ``state`` after monotonic time ``after``."""
        return self.sub.wait_for(
            lambda topic, m: (
                topic == "event" and m.get("event") == "state" and m.get("state") == state and m["t_mono"] > after
            ),
            timeout,
            f"state event {state!r}",
        )

    def decisions(self, after: float = -1.0) -> list[dict]:
        self.sub.drain()
        return [m for topic, m in self.sub.messages if topic == "decision" and m["t_mono"] > after]

    # -- the simulator log -----------------------------------------------------------------------

    def commands(self, after: float, before: float = float("inf"), sim: Sim | None = None) -> list[dict]:
        return [e for e in (sim or self.sim).log.events("command") if after < e["t"] < before]

    def wait_command_after(self, t: float, timeout: float, sim: Sim | None = None) -> dict:
        return (sim or self.sim).log.wait_for(
            lambda e: e["event"] == "command" and e["t"] > t, timeout, "a command at the simulator"
        )

    def wait_stop_after(self, t: float, timeout: float, reason: StopReason, sim: Sim | None = None) -> dict:
        """The first STOP with ``reason`` after ``t``. Another STOP may come first: under load a
        late ACK makes the host probe with STOP (host error), and the code orders nothing between
        the two."""
        return (sim or self.sim).log.wait_for(
            lambda e: e["event"] == "stop" and e["t"] > t and e["reason"] == reason,
            timeout,
            f"a STOP ({reason.name}) at the simulator",
        )

    def device_state(self, sim: Sim | None = None) -> str:
        return (sim or self.sim).log.events("state")[-1]["state"]

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None and self.sim.proc.poll() is None

    # -- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        for part in (self.sub, self.daemon):
            if part is not None:
                part.close() if part is self.sub else part.stop()
        if self.replay is not None:
            self.replay.close()
        if self.sim is not None:
            self.sim.stop()
