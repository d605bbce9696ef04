"""The session adaptation and the recalibration flag (metaemg/drift.py, controller/adaptation.py):
the numpy head against onnxruntime, the update rule and its trust region on constructed features,
hostile streams of real EMG, the state's life, the flag, and the daemon against metaemg-eval."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np
import pytest
import zmq

from metaemg.drift import TURNS, AdaptConfig, SessionAdapter, turned
from metaemg.feathead import FEAT_KINDS, FEAT_SCALES, FeatHead, feat_head, softmax
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, make_windows


@pytest.fixture(scope="module")
def model(myo_src, tmp_path_factory):
    from rig.models import male13_model

    return OnnxModel(male13_model(tmp_path_factory.mktemp("drift_models"), myo_src))


@pytest.fixture(scope="module")
def male13(myo_src):
    from rig.models import myo_recording

    return {s: myo_recording(myo_src, "Male13", s) for s in ("training0", "Test0")}


def windows_of(model: OnnxModel, emg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    info = model.info
    return make_windows(SignalChain(info.signal).process(emg), info.window, info.stride)


def adapter_for(model: OnnxModel, **changes) -> SessionAdapter:
    head = feat_head(model)
    assert head is not None and head.calibrated
    info = model.info
    return SessionAdapter(head, AdaptConfig(**changes), info.model_id, info.stride / info.sample_rate)


def test_the_numpy_head_decides_as_onnxruntime(model, male13):
    w, _ = windows_of(model, male13["Test0"].emg)
    onnx = model.predict(w.astype(np.float32))
    head = feat_head(model)
    assert head is not None
    ours = softmax(head.logits(head.embed(w)))
    assert np.abs(ours - onnx).max() < 1e-4 and (ours.argmax(1) == onnx.argmax(1)).all()
    still = adapter_for(model, enabled=False)  # the daemon's path with adaptation off: the same decisions
    one_by_one = np.stack([still.decide(x) for x in w])
    assert np.abs(one_by_one - onnx).max() < 1e-4 and (one_by_one.argmax(1) == onnx.argmax(1)).all()
    assert still.moved() == {"relax": 0.0, "open": 0.0, "close": 0.0} and still.windows == len(w)


# ------------------------------------------------------------------------------ constructed features
def _toy_head(channels: int = 2, spread: float = 10.0) -> FeatHead:
    """Whitened space = feature space; relax at 0, open at +spread e0, close at -spread e0; an LDA head."""
    d = len(FEAT_KINDS) * len(FEAT_SCALES) * channels
    means = np.zeros((3, d))
    means[1, 0], means[2, 0] = spread, -spread
    eye = np.eye(d)
    return FeatHead(
        offset=np.zeros(d),
        scale=np.ones(d),
        whiten=eye,
        means=means,
        precision=eye,
        reject_distance=0.0,
        other_means=np.zeros((4, d)),
        other_log_prior=0.0,
        weight=means.copy(),
        bias=-0.5 * (means**2).sum(axis=1),
        input_offset=np.zeros(channels),
        input_scale=np.ones(channels),
    )


def test_the_update_rule_is_an_average_bounded_by_its_trust_region():
    head = _toy_head()
    d = head.means.shape[1]
    a = SessionAdapter(head, AdaptConfig(rate=0.1), "toy", 0.05)
    assert a.radius.tolist() == [4.0, 4.0, 4.0]  # 0.4 of the distance 10 to the nearest other intent
    v = np.zeros(d)
    v[1] = 2.0  # open, seen 2 units off its mean, sideways
    for n in range(1, 31):
        a.observe(head.means[1] + v, 1)
        assert a.shift[1] == pytest.approx((1 - 0.9**n) * v, rel=1e-12, abs=1e-12)
    assert a.updates.tolist() == [0, 30, 0] and a.moved()["open"] == pytest.approx((1 - 0.9**30) * 2 / 4, abs=1e-4)
    z = head.means[1] + a.shift[1]  # the head moved with the mean: that point is now open's centre
    assert a.weight[1] @ z + a.bias[1] == pytest.approx(max(a.weight @ z + a.bias))

    far = np.zeros(d)
    far[1], far[2] = 3.0, 3.0  # 4.24 away: the mean stops at its bound, 4, in that direction
    b = SessionAdapter(head, AdaptConfig(rate=0.5), "toy", 0.05)
    for _ in range(60):
        b.observe(head.means[2] + far, 2)
    assert np.sqrt(b.shift[2] @ b.shift[2]) == pytest.approx(4.0) and b.moved()["close"] == pytest.approx(1.0)
    assert b.shift[2] == pytest.approx(far / np.sqrt(far @ far) * 4.0)

    toward = np.zeros(d)
    toward[0] = -3.0  # open seen 3 units nearer to relax: it may come 1 (0.1 of 10) nearer, no more
    for _ in range(60):
        b.observe(head.means[1] + toward, 1)
    assert b.shift[1][0] == pytest.approx(-1.0) and np.abs(b.shift[1][1:]).max() == 0.0

    stranger = np.zeros(d)
    stranger[3] = 7.0  # 49 / 12 features = 4.1 per feature: beyond learn_within (2): nothing learned
    before = b.shift.copy()
    b.observe(head.means[0] + stranger, 0)
    assert (b.shift == before).all() and b.updates[0] == 0


def test_the_turn_of_a_pattern_and_the_state_round_trip():
    p = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    assert turned(p, 0.0) == pytest.approx(p)
    assert turned(p, 1.0) == pytest.approx(np.roll(p, -1))  # a whole electrode: the next channel
    assert np.exp(turned(p, 0.5)) == pytest.approx([1.5, 3.0, 6.0, 4.5])  # between two electrodes
    assert 0.0 in TURNS and 0.5 in TURNS and -0.5 in TURNS

    head = _toy_head()
    a = SessionAdapter(head, AdaptConfig(), "id-1", 0.05)
    for _ in range(20):
        a.observe(head.means[1] + 0.5, 1)
    doc = json.loads(json.dumps(a.to_dict()))
    b = SessionAdapter(head, AdaptConfig(), "id-1", 0.05)
    assert b.restore(doc) is None and (b.shift == a.shift).all() and b.updates.tolist() == a.updates.tolist()
    other = SessionAdapter(head, AdaptConfig(), "id-2", 0.05)
    assert other.restore(doc) == "the state is for model 'id-1', not id-2" and not other.shift.any()
    beyond = {**doc, "shift": (np.asarray(doc["shift"]) * 100).tolist()}
    assert b.restore(beyond) == "a state outside the adaptation's bounds" and (b.shift == a.shift).all()
    assert b.restore({**doc, "shift": [[1.0]]}) == "a malformed adaptation state"
    assert b.restore({"format": "other"}) == "not an adaptation state"


# ------------------------------------------------------------------------------ hostile streams of real EMG
def _runs(rec, label: int) -> np.ndarray:
    return rec.emg[rec.labels == label].astype(np.float64)


def _decided(adapter: SessionAdapter, w: np.ndarray) -> np.ndarray:
    """Each window's decision with the adapter as it is now (learning off for the look)."""
    frozen = dataclasses.replace(adapter.config, enabled=False)
    look = SessionAdapter(adapter.head, frozen, adapter.model_id, adapter.stride_s)
    assert look.restore(adapter.to_dict()) is None
    return np.array([look.decide(x).argmax() for x in w])


def test_ten_minutes_of_rising_co_contraction_at_rest_never_teaches_it_to_open_on_relax(model, male13):
    rest, opening, closing = (_runs(male13["training0"], k) for k in (0, 1, 2))
    n = 10 * 60 * 200  # ten minutes at 200 Hz
    idx = np.arange(n)
    level = (idx / n)[:, None]  # co-contraction rising from nothing to a full open and close at once
    stream = rest[idx % len(rest)] + level * 0.5 * (opening[idx % len(opening)] + closing[idx % len(closing)])
    a = adapter_for(model)
    w, _ = windows_of(model, np.clip(np.round(stream), -128, 127))
    for x in w:
        a.decide(x)
    assert max(a.moved().values()) <= 1.0 + 1e-9  # every mean inside its trust region
    relax_w, ends = windows_of(model, male13["training0"].emg)
    relax_w = relax_w[male13["training0"].labels[ends] == 0]
    calibrated = adapter_for(model, enabled=False)
    moved_hand = int((_decided(a, relax_w) != 0).sum())
    assert moved_hand <= int((_decided(calibrated, relax_w) != 0).sum())  # no relax window more moves the hand


def test_five_minutes_with_open_and_close_exchanged_do_not_swap_them(model, male13):
    rec = male13["Test0"]
    swapped = rec.emg.astype(np.float64).copy()
    opening, closing = _runs(rec, 1), _runs(rec, 2)
    k = min(len(opening), len(closing))
    swapped[np.flatnonzero(rec.labels == 1)[:k]] = closing[:k]
    swapped[np.flatnonzero(rec.labels == 2)[:k]] = opening[:k]
    w, _ = windows_of(model, swapped)
    a = adapter_for(model)
    for _ in range(int(np.ceil(5 * 60 * 200 / len(swapped)))):  # five minutes of it
        for x in w:
            a.decide(x)
    assert max(a.moved().values()) <= 1.0 + 1e-9
    cal_w, ends = windows_of(model, male13["training0"].emg)
    labels = male13["training0"].labels[ends]
    after, before = _decided(a, cal_w), _decided(adapter_for(model, enabled=False), cal_w)
    for intent in (1, 2):  # the calibration session's opens are still opens, its closes closes
        mine = labels == intent
        assert (after[mine] == intent).mean() >= (before[mine] == intent).mean() - 0.02
        assert (after[mine] == 3 - intent).mean() <= 0.01


# ------------------------------------------------------------------------------ the flag
def test_the_flag_comes_after_a_slip_and_not_on_a_stable_recording(model, male13):
    from bench.drift import slip_in_the_middle

    rec = male13["Test0"]
    stable = adapter_for(model)
    w, _ = windows_of(model, rec.emg)
    for x in w:
        stable.decide(x)
    assert stable.flag is None and stable.turn == 0.0

    emg, at = slip_in_the_middle(rec.emg)
    slipped = adapter_for(model)
    w, ends = windows_of(model, emg)
    first = None
    for i, x in enumerate(w):
        slipped.decide(x)
        if slipped.flag is not None and first is None:
            first = i
    assert first is not None and ends[first] >= at, (first, at)
    assert "as if it had turned by about 0.5 of an electrode" in slipped.flag
    assert slipped.status()["recalibration"] == slipped.flag and abs(slipped.status()["turn"]) >= 0.5


# ------------------------------------------------------------------------------ the daemon
def test_the_state_file_is_taken_back_by_the_same_model_only(model, tmp_path):
    import shutil

    from controller.adaptation import Adaptation, state_path

    path = tmp_path / "current.onnx"
    shutil.copy(model.path, path)
    loaded = OnnxModel(path)
    first = Adaptation.load(loaded, path, AdaptConfig())
    assert first.adapter is not None and first.restored == "none saved: from the calibration"
    head = first.adapter.head
    for _ in range(30):
        first.adapter.observe(head.means[1] + 0.01, 1)
    assert first.save(first.adapter.to_dict()) is None
    assert state_path(path).stat().st_mode & 0o777 == 0o600
    again = Adaptation.load(loaded, path, AdaptConfig())
    assert again.restored == "restored" and again.adapter is not None
    assert (again.adapter.shift == first.adapter.shift).all()
    doc = json.loads(state_path(path).read_text())
    state_path(path).write_text(json.dumps({**doc, "model_id": "0123456789ab"}))  # another model's state
    other = Adaptation.load(loaded, path, AdaptConfig())
    assert other.adapter is not None and not other.adapter.shift.any()
    assert other.restored.endswith(
        "the state is for model '0123456789ab', not " + loaded.info.model_id + ": from the calibration"
    )

    from metaemg.modelfile import default_model_path

    base = Adaptation.load(OnnxModel(default_model_path()), default_model_path(), AdaptConfig())
    assert base.adapter is None and "uncalibrated base model" in base.why
    myhand = default_model_path().with_name("myhand_meta.onnx")  # a model on the MyHand armband's envelopes
    envelopes = Adaptation.load(OnnxModel(myhand), myhand, AdaptConfig())
    assert envelopes.adapter is None and "adapt.envelopes: true turns it on" in envelopes.why
    assert "uncalibrated" in Adaptation.load(OnnxModel(myhand), myhand, AdaptConfig(envelopes=True)).why


class SampleClock:
    """The daemon's clock: the time of the newest sample while a recording is fed (as if it
    arrived in real time), then running on from there in real time."""

    def __init__(self) -> None:
        self.t, self._since = 0.0, None

    def at(self, t: float) -> None:
        self.t = t

    def run(self) -> None:
        self._since = time.monotonic()

    def __call__(self) -> float:
        return self.t if self._since is None else self.t + time.monotonic() - self._since


def test_the_daemon_decides_a_recording_as_metaemg_eval_as_daemon_does(model, male13, tmp_path):
    """Offline equals online: one recording (Male13's Test0, the armband slipping by half an
    electrode half-way) fed to the in-process daemon (its clock the samples' own, a stride per
    chunk) and to metaemg-eval --as-daemon: the same probabilities (the session adapter's) and the
    same policy decisions, window by window; the daemon's status, monitor and log say that
    recalibration is suggested, and why."""
    import shutil

    from bench.drift import slip_in_the_middle
    from controller.config import Config, RealtimeConfig
    from controller.control import ControlClient
    from controller.daemon import Controller
    from controller.source import LslSource
    from metaemg.lsl import StreamDesc, identity
    from metalearn.evaluate_cli import decide, window_probabilities
    from metalearn.recording import Recording

    test0 = male13["Test0"]
    rec = Recording(test0.time, slip_in_the_middle(test0.emg)[0], test0.labels)
    info = model.info
    path = tmp_path / "model.onnx"
    shutil.copy(model.path, path)
    clock = SampleClock()
    cfg = Config().with_overrides(
        serial_port="loop://nobody-answers", model=str(path), monitor=f"ipc://{tmp_path}/run/monitor.sock"
    )
    cfg = dataclasses.replace(
        cfg,
        realtime=RealtimeConfig(priority=0, freeze_gc=False),
        monitor=dataclasses.replace(cfg.monitor, hwm=100000),
    )
    desc = StreamDesc("EMG", "EMG", "armband-1", "localhost", "uid-1", 8, info.sample_rate, "float32")

    class Feed(LslSource):
        def start(self) -> None:
            self.stream, self.connected, self.bound = desc, True, identity(desc)
            self._event("connected", desc)

        def stop(self, timeout: float = 0.3) -> None:
            self.connected = False

    sources: list[Feed] = []

    def make_source(*args, **kwargs) -> Feed:
        sources.append(Feed(*args, **kwargs))
        return sources[-1]

    ctrl = Controller(cfg, control_endpoint=f"ipc://{tmp_path}/run/control.sock", source=make_source, clock=clock)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"decision")
    sub.setsockopt(zmq.SUBSCRIBE, b"event")
    sub.setsockopt(zmq.SUBSCRIBE, b"cue")
    sub.setsockopt(zmq.RCVHWM, 100000)  # every decision of the recording, none dropped
    got: list[dict] = []
    status: dict = {}

    async def main() -> None:
        task = asyncio.create_task(ctrl.run())
        deadline = time.monotonic() + 20
        while not sources and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sources and not task.done()
        sub.connect(cfg.monitor_endpoint())

        def joined() -> bool:
            """A SUB socket joins a PUB asynchronously: ask the daemon for a cue on its monitor
            stream until one arrives (then every later message does)."""
            with ControlClient(ctrl.control_endpoint, timeout_s=5) as client:
                client.request({"cmd": "cue", "cue": {"cue": "probe"}})
            return bool(sub.poll(100))  # a message is there: joined (the drain below reads it)

        until = time.monotonic() + 10
        while not await asyncio.to_thread(joined):
            assert time.monotonic() < until, "the monitor subscription never joined"
        stride = info.stride
        for start in range(0, len(rec.emg), stride):
            stop = min(start + stride, len(rec.emg))
            clock.at(float(rec.time[stop - 1]))
            sources[0]._deliver(rec.emg[start:stop].astype(np.float64), rec.time[start:stop], time.monotonic_ns())
        clock.run()  # from here on the daemon's time passes again: its control loop and shutdown wait on it

        def ask() -> dict:
            with ControlClient(ctrl.control_endpoint, timeout_s=5) as client:
                return client.request({"cmd": "status"})["status"]

        until = time.monotonic() + 10
        while not (seen := await asyncio.to_thread(ask)).get("recalibration") and time.monotonic() < until:
            await asyncio.sleep(0.05)  # polls the status until the control loop has taken the flag up
        status.update(seen)
        ctrl.request_stop("test over")
        await asyncio.wait_for(task, 20)

    events: list[dict] = []
    try:
        asyncio.run(main())
        while sub.poll(500):
            topic, body = sub.recv_multipart()
            (got if topic == b"decision" else events).append(json.loads(body))
    finally:
        sub.close(0)
        ctx.term()
    ends, probs = window_probabilities(model, rec, cfg.adapt)
    offline = decide(probs, rec, ends, cfg.policy)
    assert len(got) == len(ends), (len(got), len(ends))
    online_probs = np.array([m["probabilities"] for m in got])
    # the chunked filters round a few ulp differently from one pass over the recording
    assert np.abs(online_probs - probs).max() < 1e-9
    names = ["relax", "open", "close"]
    online = np.array([names.index(m["intent"]) if m["intent"] else 0 for m in got])
    assert np.array_equal(online, offline), np.flatnonzero(online != offline)[:10]
    assert (online != 0).sum() > 100  # it opened and closed the hand, not only held it
    flag = status["recalibration"]
    assert flag and "as if it had turned by about 0.5 of an electrode" in flag
    assert status["adapt"]["active"] and abs(status["adapt"]["turn"]) >= 0.5
    assert set(status["adapt"]["moved"]) == {"relax", "open", "close"}
    assert [e["detail"] for e in events if e.get("event") == "recalibration_suggested"] == [flag]
