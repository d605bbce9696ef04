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

A run directory's ``models/`` holds ``best.pt`` (the lowest validation loss: what export takes)
and the last ``test.keep_checkpoints`` meta-epochs' ``epoch_NNNN_loss_L.pt`` (the newest: where a
resume continues); older ones are deleted as new ones are written (:func:`prune_checkpoints`).
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
BEST = "best.pt"
EPOCH_GLOB = "epoch_*_loss_*.pt"


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


def epoch_checkpoint_name(meta_epoch: int, val_loss: float) -> str:
    """``epoch_NNNN_loss_L.pt``: a meta-epoch's checkpoint, named with its validation loss."""
    return f"epoch_{meta_epoch:04d}_loss_{val_loss:.4f}.pt"


def _epoch_of(path: Path) -> int:
    try:
        return int(path.name.split("_")[1])
    except (IndexError, ValueError):
        return -1


def prune_checkpoints(written: list[Path], keep: int | None) -> list[Path]:
    """Delete all but the last ``keep`` of ``written`` (a run's meta-epoch checkpoints, oldest
    first; ``None`` keeps them all); returns those kept. Only files this run wrote are touched
    (never ``best.pt``), each deleted after its successor was written in full (atomically)."""
    if keep is None or len(written) <= keep:
        return list(written)
    kept = written[-keep:]
    for old in written[:-keep]:
        if old not in kept:
            old.unlink(missing_ok=True)
    return kept


def latest_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint file as given, or for a run directory (or its ``models/``) the newest
    meta-epoch's ``epoch_NNNN_loss_L.pt``: where a resume continues."""
    source = Path(source)
    if not source.is_dir():
        if not source.is_file():
            raise ModelError(f"{source}: no such checkpoint file or run directory")
        return source
    models = source / "models" if (source / "models").is_dir() else source
    found = [p for p in models.glob(EPOCH_GLOB) if _epoch_of(p) >= 0]
    if not found:
        raise ModelError(f"{source}: no meta-epoch checkpoint (epoch_NNNN_loss_L.pt) in {models}")
    return max(found, key=_epoch_of)


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
