"""Models for the rig, made from real data in seconds: a small supervised ``dnn`` (torch) and the
packaged default model calibrated on recordings as ``metaemg-calibrate`` adapts it. Tests and
benchmarks drive the daemon with these."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def myo_session(myo_src: Path, subject: str, session: str):
    from metalearn.myo import find_sessions

    for s in find_sessions(myo_src):
        if s.subject == subject and s.name == session:
            return s
    raise LookupError(f"{subject}/{session} not in {myo_src}")


def myo_recording(myo_src: Path, subject: str, session: str, move_s: float = 0.0):
    """A session of the Myo dataset as a recording; ``move_s``: followed by that many seconds of
    its wrist movements, labelled move (:func:`metalearn.myo.build_recording`)."""
    from metalearn.myo import build_recording

    return build_recording(myo_session(myo_src, subject, session), move_s)


def train_model(
    out: Path,
    recordings: list,
    *,
    window: int = 50,
    stride: int = 10,
    steps: int = 400,
    seed: int = 0,
    rate: float | None = None,
) -> Path:
    """Train a small dnn on ``recordings`` (supervised, full batch) and export it to ``out``."""
    import torch

    from metaemg.modelfile import CLASS_NAMES
    from metaemg.signal import SignalSpec, condition, make_windows
    from metalearn.checkpoint import save_checkpoint
    from metalearn.export import export_onnx
    from metalearn.maml import torch_threads
    from metalearn.models import build_model
    from metalearn.tasks import Scaler

    spec = SignalSpec.myo(window=window, stride=stride, **({"sample_rate": rate} if rate else {}))
    xs, ys = [], []
    for rec in recordings:
        w, ends = make_windows(condition(rec.emg, spec), spec.window, spec.stride)
        xs.append(w)
        ys.append(rec.labels[ends])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    scaler = Scaler.fit("standard", x)
    with torch_threads(1):  # a tiny model: more threads only contend with the other processes
        torch.manual_seed(seed)
        model = build_model("dnn", n_channels=spec.channels, window=spec.window, fc_units=32)
        xt = torch.from_numpy(scaler.transform(x).astype(np.float32))
        yt = torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
        model.eval()
    ckpt = {
        "model": {"kind": "dnn", "n_channels": spec.channels, "window": spec.window, "fc_units": 32},
        "state_dict": model.state_dict(),
        "signal": spec.to_dict(),
        "scaler": scaler.to_dict(),
        "inner": {"optimizer": "adam", "steps": 5, "lr": 0.01, "first_order": False},
        "class_names": list(CLASS_NAMES),
        "config": {"model": "dnn"},
        "config_hash": None,
        "data_hash": None,
        "meta_epoch": None,
        "val_loss": float(loss.detach()),
        "verify_windows": x[:16],
    }
    ckpt_path = save_checkpoint(out.with_suffix(".pt"), ckpt)
    return export_onnx(ckpt_path, out)


def calibrated_model(out: Path, recordings: list) -> Path:
    """The packaged default model calibrated on ``recordings`` as metaemg-calibrate adapts it (its
    closed-form head: milliseconds, where training a network took half a minute), exported to ``out``."""
    from metaemg.modelfile import default_model_path
    from metaemg.signal import SignalChain, make_windows
    from metalearn.adapt import Adapter, export_adapted

    adapter = Adapter.from_file(default_model_path())
    assert adapter.info is not None  # read from a model file
    spec = adapter.info.signal
    windows, labels, samples = [], [], []
    for rec in recordings:
        y = SignalChain(spec).process(rec.emg)
        w, ends = make_windows(y, spec.window, spec.stride)
        windows.append(w.astype(np.float32))
        labels.append(rec.labels[ends])
        samples.append(y)
    x = np.concatenate(windows)
    adapted = adapter.adapt(x, np.concatenate(labels), np.concatenate(samples))
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_adapted(adapted, {"format": "metaemg-calibration/1", "source": "tests"}, out, x[:32])


def male13_model(base: Path, myo_src: Path) -> Path:
    """The calibrated test model, made once per test session (cached under ``base``): the
    default model calibrated on Male13's sessions training0 and Test1; Test0 stays unseen (about
    96 % of its windows decoded offline)."""
    out = base / "ctl_models" / "male13.onnx"
    if not out.exists():
        calibrated_model(out, [myo_recording(myo_src, "Male13", s) for s in ("training0", "Test1")])
    return out
