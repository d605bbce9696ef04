"""Helpers for the calibration and eval tests: a real meta-trained base model, real Myo clips,
the CLI as a subprocess, a fake daemon's control socket. The simulated patient who follows the
cues is the rig's (:class:`rig.patient.Patient`, ``metaemg-patient``).

Polls with deadlines, never sleeps as synchronisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ("Male13", "Male14", "Male15")
INNER = {"optimizer": "adam", "steps": 5, "lr": 0.01, "first_order": True}
_CACHE: dict[str, Path] = {}
# a prelude for run_cli: as on a device PC without torch, 'import torch' fails
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
"""


def write_clip(rec, path: Path, seconds: float | None = None) -> Path:
    from metalearn.recording import write_recording

    if seconds is not None:
        rec = rec.slice(0, int(round(seconds * rec.sample_rate)))
    return write_recording(path, rec)


def base_model(myo_src: Path, tmp_root: Path) -> Path:
    """A tiny dnn meta-trained briefly (first-order MAML, 24 meta-steps) on the 22 pre-training
    subjects, with the default Myo signal chain (window 50, stride 10), exported with
    metaemg-export's code. The fixtures build it once per test run (conftest.py's ``once``)."""
    key = str(tmp_root)
    if key not in _CACHE:
        from metalearn.maml import torch_threads

        with torch_threads(1):
            _CACHE[key] = _train_base(myo_src, tmp_root / "base_model")
    return _CACHE[key]


def _train_base(myo_src: Path, out_dir: Path) -> Path:
    import torch

    from metaemg.modelfile import CLASS_NAMES
    from metaemg.signal import SignalSpec
    from metalearn.checkpoint import save_checkpoint
    from metalearn.export import export_onnx
    from metalearn.maml import InnerLoop, OuterLoop, meta_step
    from metalearn.models import build_model, model_hparams
    from metalearn.myo import build_recording, find_sessions
    from metalearn.tasks import Scaler, Task, TaskRef, find_split, task_windows
    from metalearn.train import Sampler, unscaled

    spec = SignalSpec.myo()
    tasks = []
    for s in find_sessions(myo_src):
        if s.group == "PreTrainingDataset":
            rec = build_recording(s)
            tasks.append(
                task_windows(Task(TaskRef(s.session, "myo_rorcr"), rec, find_split(rec.labels)), spec, "standard")
            )
    torch.manual_seed(0)
    model = build_model("dnn", n_channels=8, window=spec.window, n_classes=3, fc_units=32)
    inner = InnerLoop(**INNER)
    outer = OuterLoop(model, lr=3e-3, lr_cycle=100, lr_factor=0.5)
    sampler = Sampler(tasks, 32, 1.0, np.random.default_rng(0))
    for _ in range(24):
        batch = [
            tuple(torch.as_tensor(a, dtype=torch.long if k % 2 else torch.float32) for k, a in enumerate(t))
            for t in sampler.meta_batch(4)
        ]
        meta_step(model, outer, batch, inner, batched=False)
    pooled = Scaler.fit("standard", np.concatenate([unscaled(t.x_support, t.scaler).reshape(-1, 8) for t in tasks]))
    ckpt = {
        "model": model_hparams(model),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "signal": spec.to_dict(),
        "scaler": pooled.to_dict(),
        "inner": dict(INNER),
        "class_names": list(CLASS_NAMES),
        "meta_epoch": 23,
        "val_loss": None,
        "verify_windows": unscaled(tasks[0].x_query[:32], tasks[0].scaler).astype(np.float32),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "base.pt", ckpt)
    return export_onnx(out_dir / "base.pt", out_dir / "base.onnx")


def clean_env(tmp: Path) -> dict[str, str]:
    """An environment that cannot touch the user's state or a real daemon."""
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    env.update(HOME=str(tmp / "home"), XDG_STATE_HOME=str(tmp / "xdg_state"), XDG_RUNTIME_DIR=str(tmp / "xdg_run"))
    return env


def run_cli(
    tool: str, args: list[str], env: dict[str, str], timeout: float = 120, python_prelude: str | None = None
) -> subprocess.CompletedProcess:
    if python_prelude is None:
        cmd = [str(BIN / tool), *args]
    else:
        module, func = {
            "metaemg-calibrate": ("calibration.cli", "main"),
            "metaemg-eval": ("metalearn.evaluate_cli", "main"),
        }[tool]
        code = f"{python_prelude}\nimport sys\nfrom {module} import {func}\nsys.exit({func}(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


class FakeDaemon:
    """A REP socket answering like the daemon's control socket (or not answering at all): the
    ``answers`` in order for every command but ``cue``, which is acknowledged and kept in ``cues``."""

    def __init__(self, endpoint: str, answers: list[dict | None]):
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.answers = answers
        self.requests: list[dict] = []
        self.cues: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            request = json.loads(self.sock.recv())
            if request.get("cmd") == "cue":  # cues forwarded for the monitor stream: always fine
                self.cues.append(request["cue"])
                self.sock.send(b'{"ok": true}')
                continue
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else None
            if answer is None:
                return  # a hung daemon: never answers
            self.sock.send(json.dumps(answer).encode())

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close(0)
        self.ctx.term()
