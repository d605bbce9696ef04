"""metaemg-calibrate end to end: real Myo recordings, a real meta-trained base model, real
onnxruntime, a real LSL outlet with a simulated patient, real ZeroMQ sockets, the CLI as a
subprocess where its process boundary matters."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from calibrate_helpers import (
    BIN,
    NO_TORCH,
    SUBJECTS,
    FakeDaemon,
    base_model,
    clean_env,
    last_json,
    run_cli,
    write_clip,
)

from calibration.cli import EXIT_REFUSED, main
from metaemg.modelfile import OnnxModel, read_model_info
from metalearn.clip import cycle_starts, prepare_clip
from metalearn.evaluate_cli import evaluate
from metalearn.recording import Recording, read_recording, write_recording
from rig.models import myo_recording
from rig.patient import Patient
from rig.processes import unique_name, wait_until

CLIP_S = 32  # the first two cycles of training0 and a little relax


@pytest.fixture(scope="session")
def base(myo_src, once) -> Path:
    return once("base_model", lambda out: base_model(myo_src, out))


@pytest.fixture(scope="session")
def clips(myo_src, tmp_path_factory) -> dict[str, Path]:
    """Per evaluation subject: the calibration clip (training0, first 32 s) and Test0/Test1."""
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for s in SUBJECTS:
        out[f"{s}/cal"] = write_clip(myo_recording(myo_src, s, "training0"), d / f"{s}_cal.csv", CLIP_S)
        for t in ("Test0", "Test1"):
            out[f"{s}/{t}"] = write_clip(myo_recording(myo_src, s, t), d / f"{s}_{t}.csv")
    return out


def calibrate(*args, state: Path, capsys=None) -> tuple[int, str, str]:
    """In-process metaemg-calibrate (its main(), as the console script calls it)."""
    rc = main([*map(str, args), "--state-dir", str(state), "--control", f"ipc://{state}/no-daemon.sock"])
    out, err = capsys.readouterr() if capsys else ("", "")
    return rc, out, err


def test_offline_calibration_installs_the_adapted_model_with_provenance(base, clips, tmp_path):
    state = tmp_path / "state"
    proc = run_cli(
        "metaemg-calibrate",
        [
            "--from-recording",
            str(clips["Male13/cal"]),
            "--base-model",
            str(base),
            "--state-dir",
            str(state),
            "--patient",
            "P012",
            "--json",
        ],
        clean_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc.stdout)
    assert res["patient"] == "P012" and res["session"].endswith("+00:00")
    assert read_model_info(res["model"]).calibration["patient"] == "P012"
    assert len(res["confusion_after"]) == 3 and sum(map(sum, res["confusion_after"])) > 0
    assert {"accuracy_before", "accuracy_after", "adapt_seconds", "model"} <= set(res)
    assert res["installed"] and res["gate"]["passed"] and res["accuracy_after"] > res["accuracy_before"] + 0.3
    assert 0 < res["adapt_seconds"] < 5
    assert "daemon not running: it will load the new model at its next start" in proc.stdout
    assert (
        "gate: passed" in proc.stdout
        and "2 cycles (from 0.0, 15.0 s): each is scored by a model adapted on the others" in proc.stdout
    )

    models = state / "models"
    model = Path(res["model"])
    assert (
        model.parent == models
        and model.name.startswith("adapted_")
        and model.name.endswith(f"_P012_{res['model_id']}.onnx")
    )
    assert (models / "current.onnx").read_bytes() == model.read_bytes()
    assert (models / "previous.onnx").read_bytes() == base.read_bytes()  # first install: rollback -> base
    assert not list(models.glob(".candidate*"))

    clip = Path(res["clip"])
    assert clip.parent == state / "clips" and clip.read_bytes() == clips["Male13/cal"].read_bytes()
    digest = hashlib.sha256(clip.read_bytes()).hexdigest()
    assert res["clip_sha256"] == digest and clip.name.endswith(f"_P012_{digest[:8]}.csv")
    assert Path(res["report"]).name.endswith(f"_P012_{digest[:8]}.json")

    info, base_info = read_model_info(model), read_model_info(base)
    cal = info.calibration
    assert cal["clip_sha256"] == digest and cal["base_model_id"] == base_info.model_id
    assert cal["accuracy_before"] == res["accuracy_before"] and cal["accuracy_after"] == res["accuracy_after"]
    assert cal["gate"]["passed"] and cal["inner"] == dict(base_info.inner)
    assert cal["holdout"] == "cross-validation over 2 cycles" and cal["cycle_starts_s"][0] == 0.0
    # same metadata as the base, except the scaler fitted on the clip and the provenance
    same = {k: v for k, v in base_info.to_dict().items() if k not in ("scaler", "calibration", "model_id", "created")}
    assert {k: info.to_dict()[k] for k in same} == same
    assert info.scaler["kind"] == base_info.scaler["kind"] and info.scaler["offset"] != base_info.scaler["offset"]

    # "before" is the base ONNX file on every window; "after" each cycle scored by a model adapted on the other
    rec = read_recording(clip)
    assert res["accuracy_before"] == pytest.approx(_clip_accuracy(base, rec), abs=1e-12)
    assert res["accuracy_after"] == pytest.approx(_cross_validated_accuracy(base, rec), abs=1e-12)

    report = json.loads(Path(res["report"]).read_text())
    assert report["held_out"]["after"]["accuracy"] == res["accuracy_after"]
    assert len(report["held_out"]["after"]["confusion"]) == 3 and report["delays"]["after"]["changes"] >= 4
    assert Path(res["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = [json.loads(line) for line in (models / "history.jsonl").read_text().splitlines()]
    assert history[-1]["action"] == "install" and history[-1]["model_id"] == res["model_id"]
    assert history[-1]["patient"] == "P012"
    # patient data is private to the service's user (issue 14: these were 0644)
    for d in ("clips", "models", "reports"):
        assert stat.S_IMODE(os.stat(state / d).st_mode) == 0o700
    files = [p for d in ("clips", "models", "reports") for p in (state / d).iterdir()]
    assert len(files) >= 7 and {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files} == {oct(0o600)}
    # rolling back would return to the base model, which decides nothing: refused without --force
    back = run_cli("metaemg-calibrate", ["--rollback", "--state-dir", str(state), "--no-reload"], clean_env(tmp_path))
    assert back.returncode != 0 and "would return to the uncalibrated base model" in back.stderr
    assert (models / "current.onnx").read_bytes() == model.read_bytes()
    args = ["--rollback", "--force", "--state-dir", str(state), "--no-reload", "--json"]
    back = run_cli("metaemg-calibrate", args, clean_env(tmp_path))
    assert back.returncode == 0 and last_json(back.stdout)["calibrated"] is False
    assert "WARNING: the current model is now the uncalibrated base model" in back.stdout


def _clip_accuracy(model_path: Path, rec: Recording) -> float:
    from metaemg.signal import SignalChain, make_windows

    model = OnnxModel(model_path)
    w, ends = make_windows(SignalChain(model.info.signal).process(rec.emg), model.info.window, model.info.stride)
    return float((model.predict(w).argmax(1) == rec.labels[ends]).mean())


def _cross_validated_accuracy(base: Path, rec: Recording) -> float:
    """Each cycle of the clip decided by the base model adapted, with --out, on a clip of the other cycle."""
    from metalearn.adapt import Adapter

    clip = prepare_clip(rec, OnnxModel(base).info.signal)
    assert clip.n_cycles == 2
    adapter, hits = Adapter.from_file(base), 0
    for k in range(2):
        other = clip.cycles != k
        fitted = adapter.adapt(clip.windows[other], clip.labels[other], clip.conditioned[clip.cycle_samples(1 - k)])
        held = clip.cycles == k
        hits += int((fitted.predict(clip.windows[held]).argmax(1) == clip.labels[held]).sum())
    return hits / len(clip.labels)


def test_calibration_improves_accuracy_on_later_sessions(base, clips, tmp_path, capsys):
    """Adapt on the first 32 s of training0, score on Test0 and Test1 (later donnings of the
    armband) through metaemg-eval's code, for the three evaluation subjects."""
    before, after = {}, {}
    for s in SUBJECTS:
        out = tmp_path / f"{s}.onnx"
        rc, _, err = calibrate(
            "--from-recording",
            clips[f"{s}/cal"],
            "--base-model",
            base,
            "--out",
            out,
            "--no-png",
            state=tmp_path / "state",
            capsys=capsys,
        )
        assert rc == 0, err
        tests = [clips[f"{s}/Test0"], clips[f"{s}/Test1"]]
        before[s] = evaluate(base, tests)["accuracy"]
        after[s] = evaluate(out, tests)["accuracy"]
    print({s: (round(before[s], 3), round(after[s], 3)) for s in SUBJECTS})
    assert np.mean(list(after.values())) > np.mean(list(before.values())) + 0.2
    assert all(after[s] > before[s] for s in SUBJECTS)
    assert not (tmp_path / "state" / "models" / "current.onnx").exists()  # --out installs nothing


def test_a_flat_clip_gives_a_clear_message_and_no_model(base, clips, tmp_path, capsys):
    rec = read_recording(clips["Male13/cal"])
    emg = rec.emg.copy()
    emg[:, :] = 0.0
    flat = write_recording(tmp_path / "flat.csv", Recording(rec.time, emg, rec.labels))
    rc, out, err = calibrate(
        "--from-recording", flat, "--base-model", base, "--json", state=tmp_path / "s", capsys=capsys
    )
    assert rc == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "no EMG: every channel is flat" in err and "Traceback" not in err
    assert last_json(out) == {
        "ok": False,
        "error": err.strip()[7:],
        "accuracy_before": None,
        "accuracy_after": None,
        "adapt_seconds": None,
        "model": None,
    }
    assert not list((tmp_path / "s" / "models").iterdir())


def test_the_gate_refuses_a_worse_model_and_force_installs_it(base, clips, tmp_path, capsys):
    # a good base for this patient: an earlier calibration
    good = tmp_path / "good.onnx"
    assert (
        calibrate(
            "--from-recording",
            clips["Male13/cal"],
            "--base-model",
            base,
            "--out",
            good,
            "--no-png",
            state=tmp_path / "s0",
            capsys=capsys,
        )[0]
        == 0
    )
    # then a clip where the patient did the opposite of the cues in the first cycle
    rec = read_recording(clips["Male13/cal"])
    labels = rec.labels.copy()
    first = labels[: cycle_starts(labels)[1]]
    first[first > 0] = 3 - first[first > 0]  # open <-> close
    swapped = write_recording(tmp_path / "swapped.csv", Recording(rec.time, rec.emg, labels))
    state = tmp_path / "state"
    rc, out, _ = calibrate(
        "--from-recording", swapped, "--base-model", good, "--json", "--no-png", state=state, capsys=capsys
    )
    res = last_json(out)
    assert rc == EXIT_REFUSED and not res["ok"] and not res["installed"] and res["model"] is None
    assert res["accuracy_after"] < res["accuracy_before"]
    gate_line = next(line for line in out.splitlines() if line.startswith("gate: "))
    assert gate_line.startswith("gate: refused: ") and "is worse than the base model" in gate_line
    assert not (state / "models" / "current.onnx").exists() and not list((state / "models").glob("*.onnx"))
    assert Path(res["report"]).is_file()  # the refusal is on record

    rc, out, _ = calibrate(
        "--from-recording", swapped, "--base-model", good, "--json", "--no-png", "--force", state=state, capsys=capsys
    )
    res = last_json(out)
    assert rc == 0 and res["installed"] and res["gate"]["forced"] and not res["gate"]["passed"]
    assert read_model_info(state / "models" / "current.onnx").calibration["gate"]["forced"] is True


def test_one_cycle_calibrates_with_a_cross_validated_estimate_and_its_interval(base, myo_src, tmp_path, capsys):
    """The research protocol's support: one relax-open-relax-close-relax cycle (16 s of training0)."""
    clip = write_clip(myo_recording(myo_src, "Male15", "training0"), tmp_path / "one.csv", 16)
    rc, out, err = calibrate(
        "--from-recording", clip, "--base-model", base, "--json", "--no-png", state=tmp_path / "s", capsys=capsys
    )
    assert rc == 0, err
    res = last_json(out)
    assert res["holdout"] == "cross-validation over the halves of the clip's one cycle" and res["installed"]
    lo, hi = res["accuracy_after_interval"]
    assert lo < res["accuracy_after"] <= hi and res["accuracy_after"] > res["accuracy_before"] + 0.3
    assert "1 cycle: the first half of each of its runs is scored by a model adapted on the second halves" in out
    assert f"95 % interval {lo:.2f}-{hi:.2f}" in out
    report = json.loads(Path(res["report"]).read_text())
    assert report["delays"]["note"].startswith("not estimated from one cycle")
    assert read_model_info(res["model"]).calibration["holdout"] == res["holdout"]


def test_without_a_base_model_the_packaged_one_that_fits_the_clip_is_chosen(clips, tmp_path, capsys):
    from conftest import myhand_like_csv

    from metaemg.modelfile import default_model_path

    rc, out, err = calibrate(
        "--from-recording", clips["Male13/cal"], "--json", "--no-png", state=tmp_path / "s", capsys=capsys
    )
    assert rc == 0, err
    assert "base model: the packaged model myo_meta.onnx (200 Hz, 8 channels, feat), which fits the clip" in out
    assert last_json(out)["base_model"] == str(default_model_path())
    myhand = myhand_like_csv(tmp_path / "myhand.csv")  # the MyHand armband's format, about 100 Hz
    rc, out, err = calibrate("--from-recording", myhand, "--json", "--no-png", state=tmp_path / "s2", capsys=capsys)
    assert "base model: the packaged model myhand_meta.onnx (100 Hz, 8 channels, feat), which fits the clip" in out
    assert last_json(out)["base_model"] == str(default_model_path().parent / "myhand_meta.onnx"), err
    slow = myhand_like_csv(tmp_path / "slow.csv", rate=50.0)
    rc, out, err = calibrate("--from-recording", slow, "--no-png", state=tmp_path / "s3", capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no packaged model fits a stream of 8 channels at 50" in err
    assert "(packaged: myo_meta.onnx: 200 Hz, 8 channels; myhand_meta.onnx: 100 Hz, 8 channels)" in err


def test_rollback_restores_the_previous_model_and_tells_the_daemon(base, clips, tmp_path, capsys):
    state = tmp_path / "state"
    ids = []
    for s in ("Male13", "Male15"):
        rc, out, err = calibrate(
            "--from-recording",
            clips[f"{s}/cal"],
            "--base-model",
            base,
            "--patient",
            f"P{s[-2:]}",
            "--json",
            "--no-png",
            state=state,
            capsys=capsys,
        )
        assert rc == 0, err
        ids.append(last_json(out)["model_id"])
    current, previous = state / "models" / "current.onnx", state / "models" / "previous.onnx"
    first_bytes = previous.read_bytes()
    assert read_model_info(current).model_id == ids[1] and read_model_info(previous).model_id == ids[0]

    # the previous model is another patient's: refused unless both are named; and only to the model confirmed
    rc, _, err = calibrate("--rollback", state=state, capsys=capsys)
    assert rc == 2 and "would give patient P15 the model calibrated for patient P13" in err
    assert "--across-patients P15,P13" in err and read_model_info(current).model_id == ids[1]
    rc, _, err = calibrate(
        "--rollback", "--across-patients", "P15,P13", "--rollback-to", ids[1], state=state, capsys=capsys
    )
    assert rc == 2 and f"the previous model is now {ids[0]}, not {ids[1]} as confirmed" in err

    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    daemon = FakeDaemon(endpoint, [{"ok": True, "model_id": ids[0], "previous_model_id": ids[1]}])
    try:
        argv = ["--rollback", "--across-patients", "P15,P13", "--rollback-to", ids[0], "--json"]
        rc = main([*argv, "--state-dir", str(state), "--control", endpoint])
    finally:
        daemon.close()
    out = capsys.readouterr().out
    assert rc == 0 and current.read_bytes() == first_bytes
    assert last_json(out)["model_id"] == ids[0] and last_json(out)["replaced_model_id"] == ids[1]
    assert daemon.requests == [{"cmd": "reload", "path": str(current)}]
    assert f"now running model {ids[0]}" in out
    rc, out, _ = calibrate("--rollback", "--across-patients", "P13,P15", "--json", state=state, capsys=capsys)  # undo
    assert rc == 0 and last_json(out)["model_id"] == ids[1] and read_model_info(current).model_id == ids[1]

    # the console's rollback names what its page showed: both models and, across patients, both patients
    from tests.console_helpers import ConsoleProcess

    console = ConsoleProcess(tmp_path, endpoint, f"ipc://{tmp_path}/monitor.sock")
    try:
        own = {"Origin": console.base, "X-Console-Token": console.token}
        seen = {"confirm": True, "from_model": ids[1], "to_model": ids[0]}
        status, _, body = console.post("/api/rollback", {**seen, "to_model": ids[1]}, own)
        assert status == 409 and b"the models changed since the page showed them" in body
        status, _, body = console.post("/api/rollback", seen, own)
        assert status == 409 and b"gives patient P15 the model calibrated for patient P13" in body
        status, _, body = console.post("/api/rollback", {**seen, "across_patients": ["P13", "P15"]}, own)
        assert status == 409  # the two named the other way round
        status, _, body = console.post("/api/rollback", {**seen, "across_patients": ["P15", "P13"]}, own)
        assert status == 200, body
        wait_until(lambda: console.view()["job"]["state"] != "running", 60, "the rollback")
        assert console.view()["job"]["state"] == "done" and read_model_info(current).model_id == ids[0]
    finally:
        console.close()


def test_an_installed_model_is_hot_swapped_by_a_running_daemon(base, clips, tmp_path, capsys):
    endpoint = f"ipc://{tmp_path / 'control.sock'}"
    # the daemon was left paused (e.g. by a refused live calibration): the install says so
    paused = {"ok": True, "status": {"paused": True}}  # a controller without sessions per patient
    answers = [paused, {"ok": True, "model_id": "new", "previous_model_id": "old"}, paused]
    daemon = FakeDaemon(endpoint, answers)
    try:
        rc = main(
            [
                "--from-recording",
                str(clips["Male15/cal"]),
                "--base-model",
                str(base),
                "--no-png",
                "--state-dir",
                str(tmp_path / "state"),
                "--control",
                endpoint,
                "--json",
            ]
        )
    finally:
        daemon.close()
    out = capsys.readouterr().out
    res = last_json(out)
    assert rc == 0 and daemon.requests == [
        {"cmd": "status"},
        {"cmd": "reload", "path": res["current"]},
        {"cmd": "status"},
    ]
    assert res["daemon"]["status"] == "reloaded"
    paused = "the controller is paused, so the new model does not move the hand yet; run: myhand-controller ctl"
    assert f"{paused} --control {endpoint} resume" in out


def test_without_torch_it_says_what_to_install_before_recording(base, clips, tmp_path):
    state = tmp_path / "state"
    proc = run_cli(
        "metaemg-calibrate",
        ["--from-recording", str(clips["Male13/cal"]), "--base-model", str(base), "--state-dir", str(state)],
        clean_env(tmp_path),
        python_prelude=NO_TORCH,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in proc.stderr
    assert not state.exists()  # failed before anything was recorded or written


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--base-model", "/nonexistent/base.onnx", "--from-recording", "x.csv"], "base model not found"),
        (["--rollback", "--out", "m.onnx"], "--rollback takes no --out"),
        (["--rollback"], "nothing to roll back to"),
        (["--patient", "Jane Doe", "--from-recording", "x.csv"], "--patient 'Jane Doe': a patient id is 1-32 letters"),
        (["--cycles", "0", "--print-config"], "protocol.cycles: must be an integer in 1..10"),
        (["--min-accuracy", "2", "--print-config"], "gate.min_accuracy: must be a fraction"),
    ],
)
def test_bad_input_is_one_line(args, fragment, tmp_path, capsys):
    rc, _, err = calibrate(*args, state=tmp_path / "state", capsys=capsys)
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_print_config_shows_the_effective_configuration(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("protocol:\n  cycles: 4\n")
    assert main(["--config", str(cfg), "--cue-s", "2", "--print-config"]) == 0
    import yaml

    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["protocol"] == {
        "relax_s": 2.0,
        "open_s": 2.0,
        "close_s": 2.0,
        "cycles": 4,
        "countdown_s": 3,
        "reaction_s": 0.3,
        "move_s": 6.0,
    }
    assert doc["cues"]["endpoint"] is None and doc["gate"]["min_accuracy"] == 0.7
    assert doc["movement"] == {"clusters": 4, "operating_point": "balanced"}
    assert doc["gate"]["max_move_activation"] == 0.25


def test_a_live_calibration_refuses_two_armbands_with_one_name(tmp_path):
    """Without a controller to say which armband is the patient's, two with one name are refused
    in one line naming both and how to choose (LSL would hand over either: the wrong one 3 times
    in 4 before); with a source id, that one is recorded."""
    from rig.replay import Replay

    name = unique_name()
    quiet = np.zeros((20, 8), dtype=np.float32)
    armbands = [Replay(quiet, None, 200.0, name=name, source_id=sid, loop=True).start() for sid in ("left", "right")]
    try:
        args = ["--lsl-stream", name, "--state-dir", str(tmp_path / "state"), "--control", f"ipc://{tmp_path}/c.sock"]
        proc = run_cli("metaemg-calibrate", args, clean_env(tmp_path), timeout=60)
    finally:
        for a in armbands:
            a.close()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"2 armbands match name='{name}'" in proc.stderr and "none is recorded" in proc.stderr
    assert "source id 'left'" in proc.stderr and "source id 'right'" in proc.stderr
    assert "lsl.source_id (--lsl-source-id ID)" in proc.stderr
    assert not (tmp_path / "state" / "clips").exists()


def test_live_calibration_with_a_simulated_patient(base, myo_src, tmp_path):
    """The patient (a real LSL outlet playing Male13's real EMG) follows the cues published on the
    calibration's ZeroMQ socket; the clip must follow the protocol and give a working model."""
    name = unique_name()
    cues = f"ipc://{tmp_path / 'cues.sock'}"
    control = f"ipc://{tmp_path / 'control.sock'}"
    daemon = FakeDaemon(
        control,
        [
            {"ok": True, "status": {"input": {"stream": None, "bound_to": None}}},  # no armband read yet
            {"ok": True, "status": {"paused": False}},
            {"ok": True, "state": "paused"},
            {"ok": True, "model_id": "new", "previous_model_id": "old"},
            {"ok": True, "state": "running"},
        ],
    )
    # a quick reaction (1 s cues): the clip is about the tool, not the patient's timing (tests/test_patient.py)
    patient = Patient(
        myo_recording(myo_src, "Male13", "training0", move_s=4.0),
        name=name,
        endpoints=[cues],
        reaction_s=0.15,
        jitter_s=0.0,
    ).start()
    state = tmp_path / "state"
    try:
        proc = run_cli(
            "metaemg-calibrate",
            [
                "--base-model",
                str(base),
                "--state-dir",
                str(state),
                "--lsl-stream",
                name,
                "--cue-s",
                "1",
                "--cycles",
                "2",
                "--countdown-s",
                "1",
                "--move-s",
                "2",
                "--cue-endpoint",
                cues,
                "--control",
                control,
                "--json",
            ],
            clean_env(tmp_path),
            timeout=90,
        )
    finally:
        patient.stop()
        daemon.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = last_json(proc.stdout)
    assert res["installed"] and res["accuracy_after"] >= 0.7, res
    # the orthosis holds still during the recording; the daemon resumes with the new model
    assert [r["cmd"] for r in daemon.requests] == ["status", "status", "pause", "reload", "resume"]
    assert daemon.requests[3]["path"] == res["current"] and res["daemon"]["status"] == "reloaded"
    forwarded = [c["cue"] for c in daemon.cues]  # for the daemon's own monitor stream
    assert forwarded[0] == "countdown" and forwarded[-1] == "done" and forwarded.count("open") == 2
    assert "[ 2/10] OPEN " in proc.stdout and "Done: the patient can relax." in proc.stdout
    assert "[10/10] MOVE   move your wrist freely, keep your hand relaxed" in proc.stdout
    # 2 s less the reaction time (relax until then) and a window (those reaching into relax are left out)
    assert res["movement_seconds"] == pytest.approx(2.0 - 0.3 - 0.25 + 0.05, abs=0.06)
    assert "INFO" not in proc.stderr  # liblsl kept quiet

    seen = [c["cue"] for c in patient.cues if c["cue"] != "countdown"]
    assert [c for i, c in enumerate(seen) if i == 0 or c != seen[i - 1]] == [
        "relax",
        "open",
        "relax",
        "close",
        "relax",
        "open",
        "relax",
        "close",
        "relax",
        "move",
        "done",
    ]
    assert all(c["schema"] == "metaemg.monitor/1" for c in patient.cues)

    rec = read_recording(res["clip"])  # the stored clip, in the research format
    assert rec.time[0] == pytest.approx(0.0, abs=0.02) and rec.duration == pytest.approx(11.0, abs=0.1)
    assert rec.sample_rate == pytest.approx(200.0, rel=0.02)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(rec.labels)) + 1])
    assert rec.labels[starts].tolist() == [0, 1, 0, 2, 0, 1, 0, 2, 0, 3]  # 3: the movement segment
    shown = {}  # when each cue was shown: its first message (t_mono: the LSL clock on Linux)
    for c in patient.cues:
        if c["cue"] in ("relax", "open", "close", "move"):
            shown.setdefault(c["index"], c["t_mono"])
    t_shown = np.array([shown[k] for k in range(10)])
    assert np.diff(t_shown) == pytest.approx(np.ones(9), abs=0.1)
    # labels change reaction_s after each cue was shown (at the first sample from then on)
    assert rec.time[starts[1:]] == pytest.approx(t_shown[1:] - t_shown[0] + 0.3, abs=0.011)
    assert read_model_info(res["model"]).calibration["reaction_s"] == 0.3


def test_a_state_directory_other_users_can_write_is_refused(base, clips, tmp_path, capsys):
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o777)
    rc, _, err = calibrate(
        "--from-recording", clips["Male13/cal"], "--base-model", base, "--no-png", state=state, capsys=capsys
    )
    assert rc == 2 and err == (
        f"error: state directory {state} is writable by other users (mode 0777): refusing to "
        f"use it; run: chmod go-w {state}\n"
    )
    assert list(state.iterdir()) == []  # nothing written


def _swapped(path: Path, out: Path) -> Path:
    rec = read_recording(path)
    labels = np.where(rec.labels == 1, 2, np.where(rec.labels == 2, 1, rec.labels))
    return write_recording(out, Recording(rec.time, rec.emg, labels))


def test_a_clip_with_open_and_close_swapped_is_refused_by_other_peoples_muscles(clips, tmp_path, capsys):
    """issue 14: such a clip passed the gate (its held-out cycle carries the same wrong labels) and
    the installed model opened the hand for close. The packaged model knows what other people's
    intents look like (its population metadata): Male13's swapped clip is refused, the true one
    passes, --force still installs."""
    from metaemg.modelfile import default_model_path

    default = default_model_path()
    rc, out, _ = calibrate(
        "--from-recording",
        clips["Male13/cal"],
        "--base-model",
        default,
        "--no-png",
        "--json",
        state=tmp_path / "ok",
        capsys=capsys,
    )
    assert rc == 0 and last_json(out)["gate"]["passed"]
    swapped = _swapped(clips["Male13/cal"], tmp_path / "swapped.csv")
    rc, out, _ = calibrate(
        "--from-recording", swapped, "--base-model", default, "--no-png", "--json", state=tmp_path / "s", capsys=capsys
    )
    res = last_json(out)
    assert rc == EXIT_REFUSED and not res["installed"]
    (witness,) = res["gate"]["witnesses"]
    assert witness["name"] == "other people (the base model's population)"
    assert witness["swapped"] > 0.9 and witness["as_labelled"] < 0.3
    assert any(r.startswith("open and close look swapped: other people") for r in res["gate"]["reasons"])
    rc, out, _ = calibrate(
        "--from-recording",
        swapped,
        "--base-model",
        default,
        "--no-png",
        "--json",
        "--force",
        state=tmp_path / "s",
        capsys=capsys,
    )
    assert rc == 0 and last_json(out)["gate"]["forced"]


def test_a_clip_with_open_and_close_swapped_is_refused_by_the_patients_previous_model(
    base, clips, myo_src, tmp_path, capsys
):
    """A returning patient: the model calibrated at the last session decides the new clip's open
    windows as close. (The tests' base model has no population: this witness alone refuses.)"""
    state = tmp_path / "state"
    rc, out, _ = calibrate(
        "--from-recording", clips["Male14/cal"], "--base-model", base, "--no-png", "--json", state=state, capsys=capsys
    )
    assert rc == 0 and last_json(out)["installed"]
    later = write_clip(myo_recording(myo_src, "Male14", "Test0"), tmp_path / "later.csv", CLIP_S)
    rc, out, _ = calibrate(
        "--from-recording",
        _swapped(later, tmp_path / "later_swapped.csv"),
        "--base-model",
        base,
        "--no-png",
        "--json",
        state=state,
        capsys=capsys,
    )
    res = last_json(out)
    assert rc == EXIT_REFUSED and not res["installed"]
    (witness,) = res["gate"]["witnesses"]
    assert witness["name"].startswith("the previous model ") and witness["swapped"] > witness["as_labelled"] + 0.25
    rc, out, _ = calibrate(
        "--from-recording", later, "--base-model", base, "--no-png", "--json", state=state, capsys=capsys
    )
    res = last_json(out)
    assert rc == 0 and res["installed"]  # the true labels agree with the previous model
    (witness,) = res["gate"]["witnesses"]
    assert witness["as_labelled"] > witness["swapped"]


def test_nan_from_the_armband_stops_a_live_calibration_at_once_and_keeps_the_clip(base, myo_src, tmp_path):
    """issue 14: a NaN was reported only after the whole protocol, without saying where, and
    nothing was kept. Now the recording stops at the first non-finite sample, says which channel
    and when, and the clip up to it is saved as ..._incomplete.csv."""
    name = unique_name()
    cues = f"ipc://{tmp_path / 'cues.sock'}"
    # idle, the patient relaxes (the recording in order would reach the NaN before the first cue)
    patient = Patient(myo_recording(myo_src, "Male13", "training0"), name=name, endpoints=[cues], idle="relax")
    first_open = patient.runs[1][0][0]  # the first open cue plays the first open run, from its onset
    patient.emg[first_open + 40 : first_open + 60, 3] = np.nan  # about 0.2 s in
    patient.start()
    state = tmp_path / "state"
    t = time.monotonic()
    try:
        proc = run_cli(
            "metaemg-calibrate",
            [
                "--base-model",
                str(base),
                "--state-dir",
                str(state),
                "--lsl-stream",
                name,
                "--cue-s",
                "2",
                "--cycles",
                "2",
                "--countdown-s",
                "1",
                "--move-s",
                "2",
                "--cue-endpoint",
                cues,
                "--control",
                f"ipc://{tmp_path}/none.sock",
            ],
            clean_env(tmp_path),
            timeout=90,
        )
    finally:
        patient.stop()
    elapsed = time.monotonic() - t
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: the armband sent NaN on emg3 ")
    assert "s into the protocol" in lines[0]
    assert elapsed < 15  # the protocol takes 18 s after the countdown: it stopped early
    (kept,) = (state / "clips").glob("*_incomplete.csv")
    rec = read_recording(kept)
    assert 2.0 < rec.duration < 4.0 and np.isfinite(rec.emg).all() and 1 in rec.labels


def test_a_full_disk_is_one_line_and_installs_nothing(base, clips, tmp_path):
    """issue 14: disk full during calibration ended in a traceback. The kernel's own refusal
    (RLIMIT_FSIZE, as a full disk refuses a write) now gives one line naming the file."""
    import resource
    import signal
    import subprocess

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    state = tmp_path / "state"
    proc = subprocess.run(
        [
            str(BIN / "metaemg-calibrate"),
            "--from-recording",
            str(clips["Male13/cal"]),
            "--base-model",
            str(base),
            "--state-dir",
            str(state),
            "--no-png",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(tmp_path),
        preexec_fn=small_files,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: cannot write {state / 'clips'}/") and proc.stderr.count("\n") == 1
    assert "File too large" in proc.stderr and not list((state / "models").glob("*.onnx"))
    assert not list((state / "clips").iterdir())  # no half-written clip, no temporary file
