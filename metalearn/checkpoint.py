"""Training checkpoints: everything needed to resume, evaluate or export one model.

A checkpoint is a ``torch.save`` dict (written atomically) with:

- ``format``: ``"metaemg-checkpoint/1"``
- ``model``: hyper-parameters that rebuild the model with ``build_model(**model)`` (``kind`` included)
- ``state_dict``: the model weights (CPU tensors)
- ``signal``: the signal-chain spec (``SignalSpec.to_dict()``), window and stride included
- ``scaler``: the scaler baked in front of the model (``Scaler.to_dict()``; kind ``none`` = identity)
- ``inner``: the inner loop used in meta-training and to use at calibration:
  ``{"optimizer", "steps", "lr", "first_order"}``
- ``class_names``: ``["relax", "open", "close"]``
- ``config``: the resolved training config (plain dict); ``config_hash``, ``data_hash`` (sha256 hex)
- ``meta_epoch``, ``val_loss``: where in training this was saved
- ``verify_windows``: a few real conditioned windows (float32, before scaling) used by export to
  check onnxruntime against torch
- ``outer``: optional outer-optimiser state for resuming
- ``package_version``
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from metaemg import __version__
from metaemg.atomic import write_bytes
from metaemg.errors import ModelError

FORMAT = "metaemg-checkpoint/1"
REQUIRED = ("format", "model", "state_dict", "signal", "scaler", "inner", "class_names")


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    import torch

    ckpt = {"format": FORMAT, "package_version": __version__, **ckpt}
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ModelError(f"checkpoint is missing {', '.join(missing)}")
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path}: not a MetaEMG checkpoint (format {FORMAT} expected)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ModelError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return ckpt


def build_from_checkpoint(ckpt: dict):
    """The torch model of a checkpoint, weights loaded, in eval mode."""
    from metalearn.models import build_model

    model = build_model(**ckpt["model"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint weights do not fit model {ckpt['model'].get('kind')}: {exc}") from None
    return model.eval()
