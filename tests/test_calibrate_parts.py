"""The pieces of metaemg-calibrate on their own: cue protocol and labels, clip checks and split,
gate, metrics, configuration, state directory, and the daemon link over real ZeroMQ sockets."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from calibrate_helpers import FakeDaemon, base_model

from calibration import config as configuration
from calibration.cli import end_hold
from calibration.daemonlink import DaemonLink
from calibration.gate import GateRules, decide
from calibration.protocol import CueProtocol, labels_from_cues
from calibration.store import StateError, Store, resolve_state_dir
from metaemg.errors import ConfigError, DataError
from metaemg.modelfile import read_model_info
from metaemg.signal import SignalSpec
from metalearn.clip import ClipRules, cycle_starts, prepare_clip
from metalearn.metrics import change_delays, confusion, delay_summary, summary
from metalearn.recording import Recording
from rig.models import myo_recording
from rig.processes import wait_until

SPEC = SignalSpec.myo()


@pytest.fixture(scope="session")
def base(myo_src, once) -> Path:
    return once("base_model", lambda out: base_model(myo_src, out))


@pytest.fixture(scope="module")
def male13(myo_src) -> Recording:
    return myo_recording(myo_src, "Male13", "training0").slice(0, 32 * 200)


# ------------------------------------------------------------------------------------ protocol
def test_default_protocol_is_two_cycles_of_relax_open_relax_close_then_relax_then_moving():
    p = CueProtocol()
    cues = p.cues()
    assert [c.name for c in cues] == ["relax", "open", "relax", "close"] * 2 + ["relax", "move"]
    assert [c.cycle for c in cues] == [1] * 4 + [2] * 6
    assert p.duration_s == 24.0 and p.countdown_s == 3 and p.reaction_s == 0.3
    assert all(a.end == b.start for a, b in itertools.pairwise(cues))
    assert p.duration_s + p.countdown_s < 60  # issue 27's target: under a minute of the patient's time


def test_labels_follow_the_cues_shifted_by_the_reaction_time():
    shown = np.array([10.0, 13.0, 16.0])  # relax, open, relax shown at these times
    t = np.array([9.0, 10.0, 13.0, 13.29, 13.31, 16.2, 16.31, 30.0])
    got = labels_from_cues(t, shown, np.array([0, 1, 0]), 0.3)
    assert got.tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"cycles": 0}, "protocol.cycles: must be an integer in 1..10"),
        ({"open_s": 0.1}, "protocol.open_s"),
        ({"reaction_s": 2.0}, "protocol.reaction_s"),
        ({"countdown_s": 1.5}, "protocol.countdown_s"),
    ],
)
def test_bad_protocol_values_are_refused(changes, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        CueProtocol(**changes)


# ------------------------------------------------------------------------------------ clip
def test_the_clip_is_cut_into_cycles_each_with_all_three_intents(male13):
    clip = prepare_clip(male13, SPEC)
    starts = np.flatnonzero(np.diff(male13.labels)) + 1  # relax | open relax close | relax open relax close relax
    assert male13.labels[starts].tolist() == [1, 0, 2, 0, 1, 0, 2, 0]
    assert clip.cycle_starts == cycle_starts(male13.labels) == (0, starts[3])  # the relax before the 2nd open
    assert clip.n_cycles == 2 and 14.5 < clip.cycle_times()[1] < 15.5
    cycles = clip.cycles
    assert (cycles[clip.ends < starts[3]] == 0).all() and (cycles[clip.ends >= starts[3]] == 1).all()
    folds = list(clip.folds())
    assert [k for k, *_ in folds] == [0, 1]
    for k, train, held, samples in folds:
        assert set(clip.labels[held].tolist()) == {0, 1, 2} and set(clip.labels[train].tolist()) == {0, 1, 2}
        assert (train == ~held).all() and (held == (cycles == k)).all()
        assert not samples[clip.cycle_samples(k)].any() and samples.sum() == len(samples) - len(
            range(*clip.cycle_samples(k).indices(len(samples)))
        )
    assert clip.windows.shape[1:] == (50, 8) and clip.windows.dtype == np.float32
    assert clip.activity()["open"] > 1.5 and clip.activity()["close"] > 1.5


def test_every_cycle_of_a_longer_clip_is_one_fold(myo_src):
    rec = myo_recording(myo_src, "Male13", "training0")  # four cycles
    clip = prepare_clip(rec, SPEC)
    assert clip.n_cycles == 4
    assert np.bincount(clip.cycles).tolist() == [int((clip.cycles == k).sum()) for k in range(4)]
    assert all(np.bincount(clip.cycles)[k] > 200 for k in range(4))
    assert clip.cycle_samples(3).stop == rec.n_samples


def _with(rec: Recording, emg=None, labels=None) -> Recording:
    return Recording(rec.time, rec.emg if emg is None else emg, rec.labels if labels is None else labels)


def test_flat_or_absent_emg_is_refused_with_a_clear_message(male13):
    flat = male13.emg.copy()
    flat[:, 3] = 7.0
    with pytest.raises(DataError, match=r"channel\(s\) emg3 are flat"):
        prepare_clip(_with(male13, emg=flat), SPEC)
    with pytest.raises(DataError, match="no EMG: every channel is flat"):
        prepare_clip(_with(male13, emg=np.zeros_like(male13.emg)), SPEC)


def test_a_missing_intent_or_too_short_a_part_is_refused(male13):
    no_close = np.where(male13.labels == 2, 0, male13.labels)
    with pytest.raises(DataError, match="the clip has no 'close'"):
        prepare_clip(_with(male13, labels=no_close), SPEC)
    short_open = male13.labels.copy()
    opens = np.flatnonzero(short_open == 1)
    short_open[opens[opens >= 3000][40:]] = 0  # the second cycle's open lasts 0.2 s
    with pytest.raises(DataError, match=re.escape("its cycle 2 of 2 has only open 0.2")):
        prepare_clip(_with(male13, labels=short_open), SPEC)


def test_one_cycle_is_cross_validated_over_the_halves_of_its_runs(male13):
    """The research protocol's support (relax, open, relax, close, relax) is a valid clip."""
    clip = prepare_clip(male13.slice(0, 16 * 200), SPEC)
    assert clip.n_cycles == 1 and clip.holdout() == "cross-validation over the halves of the clip's one cycle"
    half = clip.run_halves()
    edges = np.concatenate([[0], np.flatnonzero(np.diff(clip.recording.labels)) + 1, [len(half)]])
    for a, b in itertools.pairwise(edges):  # each run: first half 0, second half 1
        assert (half[a : (a + b) // 2] == 0).all() and (half[(a + b) // 2 : b] == 1).all()
    folds = list(clip.folds())
    assert [k for k, *_ in folds] == [0, 1]
    start = clip.ends - SPEC.window + 1
    for k, train, held, samples in folds:
        assert not (train & held).any() and (samples == (half == 1 - k)).all()
        assert (half[clip.ends[held]] == k).all() and (half[start[held]] == k).all()  # inside one half
        assert (half[clip.ends[train]] == 1 - k).all() and (half[start[train]] == 1 - k).all()
        assert set(clip.labels[held]) == {0, 1, 2}  # every intent is scored in each fold
    scored = clip.scored
    assert scored.sum() == sum(held.sum() for _, _, held, _ in folds)  # each scored window once
    straddle = half[start] != half[clip.ends]
    assert not scored[straddle].any() and 0.6 < scored.mean() < 0.95


def test_the_accuracy_interval_counts_overlapping_windows_once():
    from calibration.gate import accuracy_interval

    lo, hi = accuracy_interval(0.9, 100, 50, 10)  # 100 windows overlapping 5-fold: 20 trials
    assert lo < 0.9 < hi and round(lo, 3) == 0.699 and round(hi, 3) == 0.972
    lo2, hi2 = accuracy_interval(0.9, 1000, 50, 10)  # ten times the data: narrower
    assert lo < lo2 < 0.9 < hi2 < hi
    assert accuracy_interval(1.0, 0, 50, 10)[1] == 1.0  # no held-out window: at least one trial


def test_wrong_rate_and_saturation_are_refused(male13):
    slow = Recording(male13.time * 2, male13.emg, male13.labels)
    with pytest.raises(DataError, match=re.escape("sample rate is 100.0 Hz, the model expects 200 Hz")):
        prepare_clip(slow, SPEC)
    sat = male13.emg.copy()
    sat[::3] = 127
    with pytest.raises(DataError, match="saturates in 33% of the clip"):
        prepare_clip(_with(male13, emg=sat), SPEC, ClipRules(max_saturated=0.2))


# ------------------------------------------------------------------------------------ gate
def _summary(acc, recall=(0.9, 0.9, 0.9)):
    return {"accuracy": acc, "recall": dict(zip(("relax", "open", "close"), recall, strict=True))}


def test_gate_rules():
    rules = GateRules(min_accuracy=0.7, min_recall=0.5)
    assert decide(_summary(0.4), _summary(0.9), rules).passed
    assert decide(_summary(0.9), _summary(0.9), rules).passed  # equal is not worse
    worse = decide(_summary(0.95), _summary(0.9), rules)
    assert not worse.install and worse.reasons == ("the adapted model (0.90) is worse than the base model (0.95)",)
    low = decide(_summary(0.3), _summary(0.6, (0.9, 0.3, 0.9)), rules)
    assert len(low.reasons) == 2 and "below the floor 0.70" in low.reasons[0] and "'open'" in low.reasons[1]
    assert low.line().startswith("refused: ") and "\n" not in low.line()
    forced = decide(_summary(0.95), _summary(0.5), rules, force=True)
    assert forced.install and forced.forced and not forced.passed and "--force" in forced.line()
    assert not decide(_summary(0.4), _summary(0.9), rules, force=True).forced  # nothing to force
    with pytest.raises(ConfigError, match=re.escape("gate.min_accuracy")):
        GateRules(min_accuracy=1.5)


# ------------------------------------------------------------------------------------ metrics
def test_confusion_recall_and_change_delays():
    y = np.array([0, 0, 1, 1, 2, 2])
    d = np.array([0, 1, 1, 1, 2, 0])
    assert confusion(y, d).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = summary(y, d)
    assert s["accuracy"] == pytest.approx(4 / 6) and s["recall"] == {"relax": 0.5, "open": 1.0, "close": 0.5}
    assert summary(np.array([0, 0]), np.array([0, 1]))["recall"]["open"] is None
    time = np.arange(12) * 0.01
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 0])
    ends = np.arange(1, 12)
    decisions = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0])  # window k ends at sample k + 1
    delays = change_delays(time, labels, ends, decisions)
    assert [c["to"] for c in delays] == ["open", "close", "relax"]
    assert delays[0]["delay_ms"] == pytest.approx(20.0)  # change at sample 3, first "open" window ends at 5
    assert delays[1]["delay_ms"] is None  # never decided close before the next change
    assert delays[2]["delay_ms"] == pytest.approx(0.0)
    assert delay_summary(delays) == {"changes": 3, "missed": 1, "median_ms": 10.0, "max_ms": 20.0}


# ------------------------------------------------------------------------------------ config
def test_config_file_overrides_defaults_and_refuses_unknown_keys(tmp_path):
    good = tmp_path / "cal.yaml"
    good.write_text("protocol:\n  cycles: 4\n  open_s: 4\ngate:\n  min_accuracy: 0.8\nstate_dir: /x\n")
    cfg = configuration.load(good)
    assert cfg.protocol.cycles == 4 and cfg.protocol.open_s == 4.0 and cfg.protocol.close_s == 2.0
    assert cfg.gate.min_accuracy == 0.8 and cfg.state_dir == "/x" and cfg.lsl.name == "MyHand-EMG"
    assert configuration.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # round trip
    for text, fragment in [
        ("protocol:\n  cycle: 4\n", "unknown key 'protocol.cycle'"),
        ("gate:\n  min_accuracy: high\n", "gate.min_accuracy: must be a number, got 'high'"),
        ("cues:\n  endpoint: udp://x\n", "cues.endpoint: must be"),
        ("protocol: [1]\n", "protocol: must be a mapping, got list"),
        ("a: [\n", "not valid YAML"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=str(bad)) as info:
            configuration.load(bad)
        assert fragment in str(info.value)


def test_state_dir_order():
    env = {"STATE_DIRECTORY": "/var/lib/myhand:/other", "XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}
    assert resolve_state_dir("/cli", "/cfg", env) == Path("/cli")
    assert resolve_state_dir(None, "/cfg", env) == Path("/var/lib/myhand")
    assert resolve_state_dir(None, "/cfg", {"XDG_STATE_HOME": "/xdg"}) == Path("/cfg")
    assert resolve_state_dir(None, None, {"XDG_STATE_HOME": "/xdg"}) == Path("/xdg/myhand")
    assert resolve_state_dir(None, None, {}).parts[-3:] == (".local", "state", "myhand")


# ------------------------------------------------------------------------------------ store
def test_install_keeps_previous_and_rollback_swaps_them(base, tmp_path):
    from datetime import UTC, datetime

    store = Store(tmp_path / "state", keep=2).ensure()
    base_id = read_model_info(base).model_id
    with pytest.raises(StateError, match="nothing to roll back to"):
        store.rollback()
    when = datetime(2025, 1, 1, tzinfo=UTC)
    cand = store.candidate_path()
    cand.write_bytes(base.read_bytes())
    first = store.install(cand, when, base, {})
    assert not cand.exists() and first.previous_model_id == base_id  # first install: previous = the base
    assert store.current.read_bytes() == store.previous.read_bytes() == base.read_bytes()
    with store.lock(), pytest.raises(StateError, match="another metaemg-calibrate is running"), store.lock():
        pass
    with pytest.raises(StateError, match=r"would return to the uncalibrated base model .* Add --force"):
        store.rollback()  # the base model decides nothing
    assert store.rollback(to_uncalibrated=True) == (base_id, base_id)
    store.previous.write_bytes(b"not a model")
    with pytest.raises(StateError, match="the previous model is unusable"):
        store.rollback()
    assert store.current.read_bytes() == base.read_bytes()  # untouched
    for _ in range(3):
        cand.write_bytes(base.read_bytes())
        store.install(cand, when, base, {})
    assert len(list(store.models.glob("adapted_*.onnx"))) == 2  # keep=2
    log = [json.loads(line) for line in store.history.read_text().splitlines()]
    assert [e["action"] for e in log] == ["install", "rollback", "install", "install", "install"]


def test_an_install_killed_half_way_is_finished_by_the_next_calibration(base, tmp_path, monkeypatch):
    """issue 14: kill -9 during an install left temporary files, previous == current (so rollback
    did nothing) and no history line. The intent is written first; the next lock finishes it."""
    from datetime import UTC, datetime

    import calibration.store as store_module
    from metaemg.modelfile import default_model_path

    other = default_model_path()  # a second, different model
    a_id, b_id = read_model_info(base).model_id, read_model_info(other).model_id
    store = Store(tmp_path / "state").ensure()
    when = datetime(2025, 1, 1, tzinfo=UTC)
    cand = store.candidate_path()
    cand.write_bytes(other.read_bytes())
    store.install(cand, when, base, {})  # current B, previous A
    cand.write_bytes(base.read_bytes())
    real_write = store_module.write_bytes

    class Killed(BaseException):
        pass

    def dies_before_current(path, data, **kw):
        if Path(path) == store.current:
            raise Killed  # the process is gone after previous.onnx was written
        real_write(path, data, **kw)

    monkeypatch.setattr(store_module, "write_bytes", dies_before_current)
    with pytest.raises(Killed):
        store.install(cand, when, base, {})
    monkeypatch.undo()
    assert read_model_info(store.previous).model_id == read_model_info(store.current).model_id == b_id  # the bad state
    assert store.pending.is_file()
    (store.models / ".current.onnx.x1y2.tmp").write_bytes(b"half")  # what a killed atomic write leaves
    (store.models / ".candidate-99999-abcd.onnx").write_bytes(b"half")
    with Store(tmp_path / "state").lock():
        pass
    assert read_model_info(store.current).model_id == a_id and read_model_info(store.previous).model_id == b_id
    assert not store.pending.exists() and not list(store.models.glob(".*"))
    log = [json.loads(line) for line in store.history.read_text().splitlines()]
    assert log[-1]["action"] == "install" and log[-1]["model_id"] == a_id and log[-1]["recovered"] is True
    assert store.rollback(to_uncalibrated=True) == (b_id, a_id)  # and rollback works again (to a base model)


# ------------------------------------------------------------------------------------ daemon link
def test_cues_are_published_on_the_pub_socket():
    ctx = zmq.Context.instance()
    with DaemonLink(cue_endpoint="tcp://127.0.0.1:*", control_endpoint="ipc:///nonexistent/c.sock") as link:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"cue")
        sub.connect(link.cue_endpoint)
        try:

            def received():  # a SUB joins late: publish until one arrives
                link.publish_cue("open", 1, 2.5, cycle=1, n_cues=13, cycles=3, total_remaining_s=30.0)
                return sub.poll(20) and sub.recv_multipart()

            topic, raw = wait_until(received, 5, "a cue on the SUB socket")
        finally:
            sub.close()
    msg = json.loads(raw)
    assert topic == b"cue"
    assert msg["schema"] == "metaemg.monitor/1" and msg["topic"] == "cue" and msg["cue"] == "open"
    assert {"t_mono", "t_wall", "cycle", "remaining_s", "index"} <= set(msg) and msg["remaining_s"] == 2.5


def test_cue_endpoint_in_use_is_a_one_line_config_error():
    none = "ipc:///nonexistent/c.sock"
    with (
        DaemonLink(cue_endpoint="tcp://127.0.0.1:*", control_endpoint=none) as link,
        pytest.raises(ConfigError, match="cannot bind"),
    ):
        DaemonLink(cue_endpoint=link.cue_endpoint, control_endpoint=none)


def test_reload_request_and_its_outcomes(tmp_path):
    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    with DaemonLink(cue_endpoint=None, control_endpoint=f"ipc://{tmp_path / 'absent.sock'}") as link:
        result = link.request_reload("/m.onnx")
    assert (
        result.status == "not_running"
        and str(result) == "daemon not running: it will load the new model at its next start"
    )

    daemon = FakeDaemon(
        endpoint,
        [
            {"ok": False, "error": "a reload is already in progress"},
            {"ok": True, "model_id": "abc", "previous_model_id": "def"},
        ],
    )
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint, timeout_s=2.0) as link:
            result = link.request_reload(tmp_path / "current.onnx")
    finally:
        daemon.close()
    assert daemon.requests == [{"cmd": "reload", "path": str(tmp_path / "current.onnx")}] * 2
    assert result.status == "reloaded" and "now running model abc (was def)" in result.note

    daemon = FakeDaemon(endpoint, [{"ok": False, "error": "model expects 8 channels", "model_id": "old"}])
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint) as link:
            result = link.request_reload("/m.onnx")
    finally:
        daemon.close()
    assert result.status == "refused" and "keeps running model old" in result.note

    daemon = FakeDaemon(endpoint, [None])  # hung
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint, timeout_s=0.2) as link:
            result = link.request_reload("/m.onnx")
    finally:
        daemon.close()
    assert result.status == "no_answer" and "did not answer" in result.note


def test_the_control_endpoint_is_found_as_the_daemon_resolves_it(tmp_path, monkeypatch):
    """issue 14: run from a clinician's shell, calibration looked in another runtime directory
    than the daemon's and said "daemon not running (nothing to pause)"."""
    from calibration.cli import _default_control

    daemon_cfg = tmp_path / "controller.yaml"
    daemon_cfg.write_text(f"control:\n  runtime_dir: {tmp_path / 'run'}\n")
    monkeypatch.setenv("MYHAND_CONFIG", str(daemon_cfg))  # as the service's /etc/myhand/controller.yaml
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    cfg = configuration.load(None)
    assert _default_control(cfg) == f"ipc://{tmp_path / 'run' / 'control.sock'}"
    assert _default_control(cfg.replace("daemon", runtime_dir="/r")) == "ipc:///r/control.sock"
    other = tmp_path / "other.yaml"
    other.write_text("control:\n  endpoint: ipc:///x/c.sock\n")
    assert _default_control(cfg.replace("daemon", config=str(other))) == "ipc:///x/c.sock"


def test_hold_pauses_a_running_daemon_and_release_resumes_only_what_it_paused(tmp_path):
    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    daemon = FakeDaemon(
        endpoint,
        [{"ok": True, "status": {"paused": False}}, {"ok": True, "state": "paused"}, {"ok": True, "state": "running"}],
    )
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint) as link:
            hold = link.hold()
            assert hold.paused_by_us and "holds still" in hold.note
            assert link.release(hold) == "daemon resumed"
    finally:
        daemon.close()
    assert [r["cmd"] for r in daemon.requests] == ["status", "pause", "resume"]

    daemon = FakeDaemon(endpoint, [{"ok": True, "status": {"paused": False}}, {"ok": True, "state": "paused"}])
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint) as link:
            hold = link.hold()
            note = end_hold(link, hold, installed=False)  # refused or failed: the session may not start
    finally:
        daemon.close()
    assert [r["cmd"] for r in daemon.requests] == ["status", "pause"] and "stays paused" in note

    held = {"ok": True, "status": {"paused": True}}
    daemon = FakeDaemon(endpoint, [held, held])
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint) as link:
            hold = link.hold()
            assert not hold.paused_by_us and link.release(hold) is None  # someone else paused it: stays paused
            # held before (a session waiting for its model to be kept): the new model is not run by itself
            note = end_hold(link, hold, installed=True)
    finally:
        daemon.close()
    assert [r["cmd"] for r in daemon.requests] == ["status", "status"]
    assert note == f"the controller holds the hand until the new model is kept: run {link.resume_command()}"
    with DaemonLink(cue_endpoint=None, control_endpoint=f"ipc://{tmp_path / 'none.sock'}") as link:
        assert (
            link.hold().note == f"daemon not running (no control socket at {link.control_endpoint}; nothing to pause)"
        )


def test_cue_forwarding_to_the_daemon_never_blocks_the_cues(tmp_path):
    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    ctx = zmq.Context.instance()
    hung = ctx.socket(zmq.REP)  # a daemon that takes requests and never answers
    hung.setsockopt(zmq.LINGER, 0)
    hung.bind(endpoint)
    try:
        with DaemonLink(cue_endpoint=None, control_endpoint=endpoint, timeout_s=0.2, forward_cues=True) as link:
            t0 = time.monotonic()
            for i in range(100):
                link.publish_cue("open", i, 1.0)
            assert time.monotonic() - t0 < 0.5
            wait_until(lambda: link._forwarder.failed == "no answer", 5, "forwarding to give up")
            assert link.forwarded == 0
    finally:
        hung.close()
