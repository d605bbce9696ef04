"""rig.patient (``metaemg-patient``): a simulated patient on a real LSL outlet who follows the
calibration's cues, received on real ZeroMQ sockets in both forms (the calibration's own cue
socket, and the daemon's monitor stream as the real DaemonLink and Monitor send them). What the
armband plays is compared, sample by sample, with the real Myo recording.

Polls with deadlines, never sleeps as synchronisation."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading

import numpy as np
import pytest

from controller.monitor import SCHEMA
from metaemg.intents import LABELS
from metalearn.recording import Recording
from rig.models import myo_recording
from rig.patient import Patient, label_runs
from rig.processes import BIN, JsonLines, end_process, spawn, unique_name, wait_until

REACTION_S, JITTER_S = 0.3, 0.1
RATE = 200.0


@pytest.fixture(scope="module")
def rec(myo_src):
    return myo_recording(myo_src, "Male13", "Test0", move_s=4.0)  # and its wrist movements, labelled move


class Inlet:
    """The armband as a consumer sees it: every sample and its LSL timestamp."""

    def __init__(self, name: str) -> None:
        import pylsl

        (info,) = wait_until(lambda: pylsl.resolve_byprop("name", name, 1, 0.5), 20, f"LSL stream {name!r}")
        self.inlet = pylsl.StreamInlet(info, recover=False)
        self.inlet.open_stream(10)
        self.chunks: list[np.ndarray] = []
        self.stamp_chunks: list[np.ndarray] = []

    def drain(self) -> int:
        samples, stamps = self.inlet.pull_chunk(timeout=0.0)
        if stamps:
            self.chunks.append(np.asarray(samples, dtype=np.float32))
            self.stamp_chunks.append(np.asarray(stamps))
        return len(stamps)

    def received(self) -> tuple[np.ndarray, np.ndarray]:
        self.drain()
        if not self.chunks:
            return np.empty((0, 8), np.float32), np.empty(0)
        return np.concatenate(self.chunks), np.concatenate(self.stamp_chunks)

    def count(self) -> int:
        self.drain()
        return sum(len(c) for c in self.stamp_chunks)

    def last_stamp(self) -> float:
        self.drain()
        return float(self.stamp_chunks[-1][-1]) if self.stamp_chunks else -np.inf

    def close(self) -> None:
        self.inlet.close_stream()


class CueSocket:
    """A PUB socket of our own, sending cues in either form (``monitor``: as the daemon republishes them)."""

    def __init__(self, endpoint: str, monitor: bool = False) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.monitor = monitor

    def send(self, cue: dict) -> None:
        from controller.monitor import encode

        if self.monitor:
            frames = encode("cue", {"cue": cue, "source": "control"})
        else:
            frames = [b"cue", json.dumps({"schema": SCHEMA, "topic": "cue", **cue}).encode()]
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


_probes = itertools.count()


def subscribed(patient: Patient, send, what: str) -> None:
    """Wait until ``patient`` receives what ``send`` publishes (a probe cue it ignores): a SUB
    socket misses what is published before its subscription reaches the publisher."""

    sent: set[int] = set()

    def probe():
        sent.add(next(_probes))
        send({"cue": "probe", "index": max(sent)})
        return any(c["cue"] == "probe" and c["index"] in sent for c in patient.cues)

    wait_until(probe, 20, f"the patient subscribed to {what}", poll=0.05)


def intent_event(patient: Patient, index: int) -> dict:
    return wait_until(
        lambda: next((e for e in patient.events if e["event"] == "intent" and e["cue_index"] == index), None),
        10,
        f"the patient following cue {index}",
    )


def expected_rows(labels: np.ndarray, intent: str, row: int, m: int) -> np.ndarray:
    """The recording's rows from ``row`` on, as the patient should play them: the recording in
    order (looping), or the samples labelled ``intent`` in order (one run, then the next)."""
    if intent == "recording":
        return (row + np.arange(m)) % len(labels)
    rows = np.flatnonzero(labels == LABELS.index(intent))
    p = int(np.searchsorted(rows, row))
    assert rows[p] == row, f"row {row} is not labelled {intent}"
    return rows[(p + np.arange(m)) % len(rows)]


def check_played(patient: Patient, data: np.ndarray, stamps: np.ndarray, events: list[dict]) -> list[int]:
    """Every sample received is the recording's row that the events say (the sample stamped ``at
    + i / rate`` after an event: the ``i``-th row of what it plays); the samples checked per event."""
    assert len(stamps) and np.allclose(np.diff(stamps), 1 / patient.rate, atol=1e-6), "samples lost or reordered"
    assert stamps[0] >= events[0]["at"]
    counts = []
    for e, nxt in zip(events, [*events[1:], None], strict=True):
        sel = (stamps >= e["at"]) & (stamps < (np.inf if nxt is None else nxt["at"]))
        if stamps[0] <= e["at"] and nxt is not None:
            assert stamps[sel][0] == e["at"], f"no sample stamped at the switch of {e}"
        pos = np.rint((stamps[sel] - e["at"]) * patient.rate).astype(int)
        want = expected_rows(patient.labels, e["intent"], e["row"], int(pos.max(initial=-1)) + 1)[pos]
        np.testing.assert_array_equal(data[sel], patient.emg[want], err_msg=f"after {e}")
        counts.append(int(sel.sum()))
    return counts


def follow(patient: Patient, inlet: Inlet, send, cues: list[tuple[str, int]], hold_s: float = 0.3) -> list[dict]:
    """Send each cue (three times, as the calibration repeats it each second), wait until it is
    followed and played for ``hold_s``; the intent events, each with ``sent`` (LSL time)."""
    import pylsl

    events = []
    for name, index in cues:
        sent = pylsl.local_clock()
        for remaining in (3, 2, 1):
            send({"cue": name, "index": index, "remaining_s": remaining})
        e = dict(intent_event(patient, index), sent=sent)
        wait_until(lambda e=e: inlet.last_stamp() > e["at"] + hold_s, 10, f"{hold_s} s of {name}")
        events.append(e)
    return events


def test_runs_are_the_recordings_runs_of_equal_labels():
    labels = np.array([0, 0, 1, 1, 1, 0, 2, 2, 0, 1])
    runs = label_runs(labels)
    assert [r.tolist() for r in runs] == [[[0, 2], [5, 6], [8, 9]], [[2, 5], [9, 10]], [[6, 8]], []]
    assert label_runs(np.array([0, 3, 3]))[3].tolist() == [[1, 3]]  # the movements that are no intent


def test_it_follows_the_calibrations_cues_with_real_runs_after_its_reaction_time(rec, tmp_path):
    """Cues on the calibration tool's own socket (the cue object at the top level). After each
    new cue and its reaction time, the armband plays a labelled run of the cued intent from its
    onset, the next run at each cue; after ``done`` the recording again, in order."""
    endpoint = f"ipc://{tmp_path / 'cues.sock'}"
    cues = CueSocket(endpoint)
    name = unique_name("patient")
    patient = Patient(rec, name=name, endpoints=[endpoint], reaction_s=REACTION_S, jitter_s=JITTER_S, seed=3)
    patient.start()
    inlet = Inlet(name)
    try:
        subscribed(patient, cues.send, "the cue socket")
        order = [("countdown", -1), ("relax", 0), ("open", 1), ("relax", 2), ("close", 3), ("relax", 4)]
        order += [("open", 5), ("relax", 6), ("close", 7), ("move", 8), ("done", 9)]
        events = follow(patient, inlet, cues.send, order)
        data, stamps = inlet.received()
    finally:
        inlet.close()
        patient.stop()
        cues.close()

    played = "relax relax open relax close relax open relax close move recording"
    assert [e["intent"] for e in events] == played.split()
    assert patient.intent == "recording" and len(patient.events) == 1 + 1 + len(order) + 1  # start, idle, cues, end
    for e in events:
        # the reaction time: drawn in reaction_s +- jitter_s, measured from the cue's arrival,
        # which is after we sent it; the first sample of the new intent is the first stamped then
        assert REACTION_S - JITTER_S <= e["delay"] <= REACTION_S + JITTER_S
        assert e["sent"] <= e["t"] and e["t"] + e["delay"] <= e["at"] < e["t"] + e["delay"] + 1 / patient.rate
        assert e["at"] >= e["sent"] + REACTION_S - JITTER_S  # by our own clock: never earlier
    assert len({e["delay"] for e in events}) > 1  # jittered

    # from a run's onset, each cue of an intent the next run of it (the first relax: the countdown's)
    runs = label_runs(patient.labels)
    onsets = {intent: [int(s) for s, _ in runs[k]] for k, intent in enumerate(LABELS)}
    for intent in LABELS:  # the movement segment's cue: the wrist movements
        rows = [e["row"] for e in events if e["intent"] == intent]
        assert rows == onsets[intent][: len(rows)], intent

    # sample by sample: what was received is the recording, as the events say, idle before the cues
    counts = check_played(patient, data, stamps, [patient.events[1], *events])
    assert counts[0] > 0 and min(counts[1:]) >= 0.3 * RATE


def test_cues_arriving_both_ways_are_followed_once(rec, tmp_path):
    """The calibration publishes each cue on its own socket and the daemon republishes it on its
    monitor stream (the real DaemonLink forwarding to a control socket that publishes with the
    daemon's real Monitor, as controller.daemon's ``cue`` command does): the patient hears
    each cue twice and follows it once."""
    import zmq

    from calibration.daemonlink import DaemonLink
    from controller.config import MonitorConfig
    from controller.monitor import Monitor

    cue_ep = f"ipc://{tmp_path / 'cues.sock'}"
    monitor_ep = f"ipc://{tmp_path / 'run' / 'monitor.sock'}"
    control_ep = f"ipc://{tmp_path / 'run' / 'control.sock'}"
    ctx = zmq.Context()
    monitor = Monitor(MonitorConfig(), ctx, monitor_ep)
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(control_ep)
    halt = threading.Event()

    def daemon() -> None:  # the daemon's _ctl_cue
        while not halt.is_set():
            if rep.poll(20):
                request = json.loads(rep.recv())
                monitor.publish("cue", {"cue": request["cue"], "source": "control"})
                rep.send(b'{"ok": true}')

    thread = threading.Thread(target=daemon, daemon=True)
    thread.start()
    link = DaemonLink(control_endpoint=control_ep, cue_endpoint=cue_ep, forward_cues=True)
    name = unique_name("patient")
    patient = Patient(rec, name=name, endpoints=[monitor_ep, cue_ep], jitter_s=0.0).start()
    inlet = Inlet(name)
    try:
        subscribed(patient, lambda cue: monitor.publish("cue", {"cue": cue}), "the monitor stream")

        def both_ways(cue: dict) -> None:  # the calibration's socket subscribed too: a probe comes twice
            link.publish_cue(cue["cue"], cue["index"], 0.0)
            wait_until(lambda: link.forwarded >= forwarded[0] + 1, 10, "the forwarded probe")
            forwarded[0] += 1

        forwarded = [link.forwarded]
        probe = {"cue": "probe"}
        wait_until(lambda: (both_ways({**probe, "index": next(_probes)}), patient.duplicates)[1], 20, "2 ways")
        received, forwarded_before = len(patient.cues), link.forwarded
        sent = 0
        for name_, index in [("countdown", -1), ("relax", 0), ("open", 1), ("relax", 2), ("done", 3)]:
            for remaining in (2, 1):
                link.publish_cue(name_, index, remaining, cycle=1, n_cues=3, cycles=1)
                sent += 1
            intent_event(patient, index)
            wait_until(lambda: inlet.last_stamp() > patient.events[-1]["at"] + 0.2, 10, f"0.2 s of {name_}")
        again = patient.duplicates
        wait_until(lambda: again.total() - again["probe"] == sent, 10, "every cue by the second way")
        forwarded_cues = link.forwarded - forwarded_before  # acknowledged by the daemon
        data, stamps = inlet.received()
    finally:
        inlet.close()
        patient.stop()
        link.close()
        halt.set()
        thread.join(2)
        rep.close(linger=0)
        monitor.close()
        ctx.term()

    cues = [c for c in patient.cues[received:] if c["cue"] != "probe"]
    assert len(cues) == sent and forwarded_cues == sent and again.total() - again["probe"] == sent
    assert all(c["source"] == "metaemg-calibrate" for c in cues)  # the cue object itself, either way
    intents = [e for e in patient.events if e["event"] == "intent"]
    assert [(e["cue"], e["intent"]) for e in intents] == [
        (None, "recording"),
        ("countdown", "relax"),
        ("relax", "relax"),
        ("open", "open"),
        ("relax", "relax"),
        ("done", "recording"),
    ]
    assert [e["delay"] for e in intents[1:]] == pytest.approx([REACTION_S] * 5, abs=1e-9)  # no jitter
    check_played(patient, data, stamps, intents)


def test_idle_it_plays_the_recording_in_order_looping(rec):
    """No calibration: the recording itself, in order, from its start, and again at its end (a
    short recording of real rows, 0.45 s, so that it loops within the test)."""
    runs = label_runs(rec.labels)
    rows = np.concatenate([np.arange(s, s + 30) for s in (runs[0][0][0], runs[1][0][0], runs[2][0][0])])
    short = Recording(np.arange(len(rows)) / RATE, rec.emg[rows], rec.labels[rows])
    name = unique_name("patient")
    patient = Patient(short, name=name).start()
    inlet = Inlet(name)
    try:
        wait_until(lambda: inlet.count() > 3 * len(rows), 10, "3 loops of the recording")
        data, stamps = inlet.received()
    finally:
        inlet.close()
        patient.stop()
    (idle,) = [e for e in patient.events if e["event"] == "intent"]
    assert idle == {**idle, "intent": "recording", "cue": None, "row": 0, "at": patient.t0}
    assert patient.intent == "recording"
    # each sample's row follows from its timestamp: row (stamp - t0) * rate, modulo the length
    want = np.rint((stamps - patient.t0) * patient.rate).astype(int) % len(rows)
    np.testing.assert_array_equal(data, patient.emg[want])
    assert len(stamps) > 2 * len(rows) and (np.diff(want) < 0).sum() >= 2  # it looped


def test_idle_relax_plays_relax_runs(rec):
    name = unique_name("patient")
    patient = Patient(rec, name=name, idle="relax").start()
    inlet = Inlet(name)
    try:
        wait_until(lambda: inlet.last_stamp() > patient.t0 + 0.5, 10, "0.5 s of samples")
        data, stamps = inlet.received()
    finally:
        inlet.close()
        patient.stop()
    (idle,) = [e for e in patient.events if e["event"] == "intent"]
    assert idle["intent"] == "relax" and idle["row"] == label_runs(rec.labels)[0][0][0]
    check_played(patient, data, stamps, [idle])  # relax rows, one run after the other


def test_the_console_script_follows_a_cue_and_logs_it(tmp_path):
    """``metaemg-patient`` as a process: the armband appears, an ``open`` cue on the calibration's
    socket is followed, and the JSON-lines log says so."""
    endpoint = f"ipc://{tmp_path / 'cues.sock'}"
    cues = CueSocket(endpoint)
    name = unique_name("patient")
    log = tmp_path / "patient.jsonl"
    argv = ["synth:1", "--lsl-stream", name, "--cues", endpoint, "--log", str(log), "--duration", "60"]
    proc = spawn([str(BIN / "metaemg-patient"), *argv])
    try:
        inlet = Inlet(name)
        lines = JsonLines(log)
        lines.wait_for(lambda e: e["event"] == "start", 10, "the start line")

        def heard() -> bool:
            n = next(_probes)
            cues.send({"cue": "probe", "index": n})
            cues.send({"cue": "open", "index": 1, "remaining_s": 2})
            lines.poll()
            return bool(lines.events("intent")[1:])

        wait_until(heard, 20, "the patient following the open cue", poll=0.05)
        wait_until(lambda: inlet.last_stamp() > lines.events("intent")[1]["at"], 10, "the open samples")
        inlet.close()
    finally:
        rc = end_process(proc)
        cues.close()
    assert rc == 0
    start, idle, opened = lines.events("start")[0], *lines.events("intent")
    assert start["name"] == name and start["endpoints"] == [endpoint] and start["rate"] == pytest.approx(RATE, rel=0.02)
    assert idle["intent"] == "recording" and opened["intent"] == "open" and opened["cue_index"] == 1
    assert 0.2 <= opened["delay"] <= 0.4 and opened["at"] >= opened["t"] + opened["delay"]
    assert lines.events("end")  # SIGTERM: stopped in order


def test_help_and_a_bad_recording_are_one_line():
    out = subprocess.run([str(BIN / "metaemg-patient"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for word in ("--monitor", "--cues", "--reaction-s", "--jitter-s", "--seed", "--idle", "--log", "--config"):
        assert word in out.stdout
    bad = subprocess.run(
        [str(BIN / "metaemg-patient"), "/nonexistent/rec.csv", "--cues", "ipc:///nonexistent/cues.sock"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr == "error: /nonexistent/rec.csv: recording file not found\n"
    bad = subprocess.run(
        [str(BIN / "metaemg-patient"), "synth", "--cues", "nowhere"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: cue endpoint 'nowhere': cannot connect")
    assert len(bad.stderr.splitlines()) == 1


def test_by_default_it_listens_where_the_daemon_publishes(tmp_path):
    """No --monitor/--cues: the daemon's monitor endpoint as the daemon resolves it (its --config,
    as metaemg-monitor finds it); --cues alone: the calibration's default cue socket only."""
    endpoint = f"ipc://{tmp_path / 'run' / 'monitor.sock'}"
    config = tmp_path / "controller.yaml"
    config.write_text(f"monitor:\n  endpoint: {endpoint}\n")

    def endpoints(*args: str) -> list[str]:
        argv = ["synth", "--name", unique_name("patient"), "--duration", "0", "--log", "-", *args]
        proc = subprocess.run(
            [str(BIN / "metaemg-patient"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert lines[0]["event"] == "start" and "following the cues on" in proc.stderr
        # the old spelling still works, and says the new one
        assert "note: --name is now --lsl-stream (the old spelling goes in the next release)" in proc.stderr
        return lines[0]["endpoints"]

    assert endpoints("--config", str(config)) == [endpoint]
    assert endpoints("--cues", "ipc:///x/own.sock") == ["ipc:///x/own.sock"]
    assert endpoints("--config", str(config), "--monitor", "--cues", "ipc:///x/cues.sock") == [
        endpoint,
        "ipc:///x/cues.sock",
    ]
