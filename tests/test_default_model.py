"""The shipped default Myo meta-model: loadable without torch, honest metadata, works on real data."""

from pathlib import Path

import numpy as np

import metalearn
from metaemg.modelfile import OnnxModel
from metaemg.signal import SignalChain, make_windows
from metalearn.recording import read_recording

DEFAULT = Path(metalearn.__file__).parent / "default_model" / "myo_meta.onnx"


def test_metadata_describes_a_myo_model_trained_on_pretraining_subjects_only():
    model = OnnxModel(DEFAULT)
    info = model.info
    assert (info.sample_rate, info.channels, info.window, info.stride) == (200.0, 8, 50, 10)
    assert info.class_names == ("relax", "open", "close")
    assert info.kind == "cnn"
    assert dict(info.inner) == {"optimizer": "adam", "steps": 5, "lr": 0.01, "first_order": False}
    config = dict(info.to_dict())
    assert config["calibration"] is None
    model.check_stream(200.0, 8)
    model.self_test()


def test_default_model_adapted_on_one_session_works_on_a_later_one(myo_data):
    """The meta-model is a starting point for calibration (its own inner loop), not a classifier
    to use unadapted: adapt on Male15's training0 support, score on Test0 through the ONNX path."""
    import torch

    from metalearn.export import export_model, load_torch_from_onnx
    from metalearn.maml import adapt, model_params
    from metalearn.tasks import Scaler, find_split

    net, info = load_torch_from_onnx(DEFAULT)
    cal = read_recording(myo_data / "myo_Male15_training0" / "g0_myo_rorcr.csv")
    y = SignalChain(info.signal).process(cal.emg)
    split = find_split(cal.labels)
    scaler = Scaler.fit(info.scaler["kind"], y[:split])
    windows, ends = make_windows(y, info.window, info.stride)
    sup = ends < split
    x = torch.as_tensor(scaler.transform(windows[sup]), dtype=torch.float32)
    params = adapt(net, model_params(net), x, torch.as_tensor(cal.labels[ends][sup]), **dict(info.inner))
    net.load_state_dict({k: v.detach() for k, v in params.items()})
    meta = {**info.to_dict(), "scaler": scaler.to_dict()}
    path = export_model(net, meta, Path(myo_data) / "adapted.onnx", verify_windows=windows[:16].astype(np.float32))
    test = read_recording(myo_data / "myo_Male15_Test0" / "t0_myo_rorcr.csv")
    model = OnnxModel(path)
    tw, te = make_windows(SignalChain(info.signal).process(test.emg), info.window, info.stride)
    accuracy = (model.predict(tw.astype(np.float32)).argmax(1) == test.labels[te]).mean()
    assert accuracy > 0.75  # chance is 1/3
