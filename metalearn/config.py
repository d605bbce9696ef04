"""The training config: the research code's ``test:`` section, validated into one typed object.

Every key of the research configs is accepted (a research config file runs unchanged); keys
added here have defaults. An unknown key or a bad value is one ConfigError naming it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from metaemg.errors import ConfigError
from metaemg.modelfile import INNER_OPTIMIZERS as OPTIMIZERS
from metaemg.modelfile import MODEL_KINDS
from metaemg.signal import SignalSpec
from metalearn.tasks import normalise_scaler_kind

COMPILE_BACKENDS = ("aot_eager", "inductor")  # torch.compile backends (test.compile)

PRESETS = {"myo": SignalSpec.myo, "myhand": SignalSpec.myhand}
AUTO_MYO_ABOVE_HZ = 150.0  # signal: auto picks myo for data faster than this, else myhand

# keys whose null means something (what it means, for the error message)
NULLABLE = {
    "time_seq_len": "the signal preset's window",
    "stride": "the signal preset's stride",
    "keep_checkpoints": "keep every meta-epoch's",
}


@dataclass(frozen=True)
class TrainConfig:
    # --- the research code's keys --------------------------------------------------------
    train_collection_json: str
    test_collection_json: str | None = None
    data_root: str = "data/collected_data"
    inner_lr: float = 1e-2
    outer_lr: float = 1e-3
    meta_steps: int = 50
    inner_steps: int = 5
    n_val_tasks: int = 2
    n_train_tasks: int = 4
    save: bool = True
    fc_units: int = 64
    batch_size: int = 32
    time_seq_len: int | None = None  # None: the signal preset's window
    stride: int | None = None  # None: the signal preset's stride
    scale: str = "standard"
    model: str = "dnn"
    seed: int | str = 0
    device: str | None = None
    lr_cycle: int = 15
    lr_factor: float = 0.9
    converge_baselines: bool = True
    run_name: str = ""
    rorcr_size: float = 1.0
    wandb: bool = False
    # --- added ---------------------------------------------------------------------------
    inner_optimizer: str = "adam"
    first_order: bool = False
    signal: Any = "auto"
    converge_steps: tuple[int, ...] = (1, 5, 10, 50, 100)
    model_hparams: dict = field(default_factory=dict)
    tensorboard: bool = True
    resume: str | None = None
    augment_rotation: bool = False
    inner_batch_size: int | None = None
    compile: bool | str | None = False
    lda_shrinkage: float = 0.3
    lda_reject: float = 0.0
    non_intent: bool = False
    non_intent_log_prior: float = -18.0
    train_data_root: str | None = None  # None: data_root
    test_data_root: str | None = None  # None: data_root
    keep_checkpoints: int | None = 3  # the last N meta-epochs' checkpoints (and best.pt); None: all

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", normalise_scaler_kind(self.scale))
        object.__setattr__(self, "converge_steps", tuple(self.converge_steps or ()))
        ints = (
            "meta_steps",
            "inner_steps",
            "n_val_tasks",
            "n_train_tasks",
            "fc_units",
            "batch_size",
            "time_seq_len",
            "stride",
            "lr_cycle",
            "keep_checkpoints",
        )
        for key in ints:
            v = getattr(self, key)
            if v is None and key in NULLABLE:
                continue
            low = 0 if key in ("n_val_tasks", "meta_steps", "inner_steps") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                null = f" or null ({NULLABLE[key]})" if key in NULLABLE else ""
                raise ConfigError(f"test.{key} must be an integer >= {low}{null}, got {v!r}")
        for key in ("inner_lr", "outer_lr", "lr_factor"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"test.{key} must be a number > 0, got {v!r}")
        if not (isinstance(self.rorcr_size, (int, float)) and 0 < self.rorcr_size <= 1):
            raise ConfigError(
                f"test.rorcr_size must be in (0, 1] (fraction of the support used), got {self.rorcr_size!r}"
            )
        if not (isinstance(self.seed, int) or self.seed == "r"):
            raise ConfigError(f"test.seed must be an integer or 'r' (random), got {self.seed!r}")
        if self.device not in (None, "", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"test.device must be empty (auto), cpu or cuda[:N], got {self.device!r}")
        if str(self.model).lower() not in MODEL_KINDS:
            raise ConfigError(f"test.model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        object.__setattr__(self, "model", str(self.model).lower())
        if self.inner_optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"test.inner_optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.inner_optimizer!r}"
            )
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.converge_steps):
            raise ConfigError(f"test.converge_steps must be integers >= 1, got {list(self.converge_steps)!r}")
        b = self.inner_batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ConfigError(f"test.inner_batch_size must be null or an integer >= 1, got {b!r}")
        c = self.compile
        if c is True:
            object.__setattr__(self, "compile", COMPILE_BACKENDS[0])
        elif c in (False, None, ""):
            object.__setattr__(self, "compile", None)
        elif c not in COMPILE_BACKENDS:
            raise ConfigError(f"test.compile must be false, true or one of {', '.join(COMPILE_BACKENDS)}, got {c!r}")
        v = self.lda_shrinkage
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"test.lda_shrinkage must be a number in [0, 1], got {v!r}")
        v = self.lda_reject
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v == 0 or 1 <= v <= 100):
            raise ConfigError(f"test.lda_reject must be 0 (off) or a number in [1, 100], got {v!r}")
        if not isinstance(self.non_intent, bool):
            raise ConfigError(f"test.non_intent must be true or false, got {self.non_intent!r}")
        v = self.non_intent_log_prior
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v < 0:
            raise ConfigError(f"test.non_intent_log_prior must be a number in [-100, 0), got {v!r}")
        if self.non_intent and self.model != "feat":
            raise ConfigError(f"test.non_intent needs test.model=feat (a closed-form head), got {self.model!r}")
        if not isinstance(self.model_hparams, dict):
            raise ConfigError("test.model_hparams must be a mapping")
        self.signal_spec(200.0)  # validate the signal section early

    @classmethod
    def from_dict(cls, section: object) -> TrainConfig:
        if not isinstance(section, dict):
            raise ConfigError("the config needs a 'test:' section (the research code's layout)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) test.{', test.'.join(unknown)}")
        if not section.get("train_collection_json"):
            raise ConfigError("test.train_collection_json is required")
        if "data_root" in section and not section["data_root"]:
            raise ConfigError("test.data_root must name a directory, got an empty value")
        for key in ("train_data_root", "test_data_root"):
            if section.get(key) == "":
                raise ConfigError(f"test.{key} must name a directory or be null (test.data_root), got an empty value")
        return cls(**section)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["converge_steps"] = list(self.converge_steps)
        return d

    def data_roots(self) -> tuple[str, str]:
        """(training, test) data roots as given: ``train_data_root`` / ``test_data_root``, each
        ``data_root`` when null."""
        return self.train_data_root or self.data_root, self.test_data_root or self.data_root

    def preset(self, data_rate: float) -> tuple[str, str]:
        """(preset name, how it was chosen): ``test.signal``'s preset, or for ``auto`` the one for
        the data's sample rate."""
        sig = self.signal
        preset = sig.get("preset", "auto") if isinstance(sig, dict) else sig
        if preset == "auto":
            name = "myo" if data_rate > AUTO_MYO_ABOVE_HZ else "myhand"
            return name, f"test.signal auto: the data's {data_rate:.4g} Hz"
        if preset not in PRESETS:
            raise ConfigError(f"test.signal preset must be auto, myo or myhand, got {preset!r}")
        return preset, "test.signal"

    def signal_spec(self, data_rate: float) -> SignalSpec:
        """The signal-chain spec: a preset name, ``auto`` (by the data's sample rate), or a mapping
        with an optional ``preset`` plus keys of :class:`SignalSpec`. Window and stride are
        ``time_seq_len`` and ``stride`` where given, else the preset's."""
        sig = self.signal
        overrides = {k: v for k, v in sig.items() if k != "preset"} if isinstance(sig, dict) else {}
        preset, _ = self.preset(data_rate)
        for key in ("window", "stride"):
            if key in overrides:
                raise ConfigError(f"test.signal.{key}: set test.time_seq_len / test.stride instead")
        given = {k: v for k, v in (("window", self.time_seq_len), ("stride", self.stride)) if v is not None}
        try:
            return PRESETS[preset](**{**overrides, **given})
        except TypeError as exc:
            raise ConfigError(f"test.signal: {exc}") from None

    def window_origin(self, data_rate: float) -> dict[str, str]:
        """Where the window and stride come from, ``{"window": ..., "stride": ...}``: ``"set by
        test.time_seq_len"`` / ``"set by test.stride"`` when given (the config file or an
        override), else ``"the <preset> preset's"``."""
        preset, _ = self.preset(data_rate)
        return {
            "window": "set by test.time_seq_len" if self.time_seq_len is not None else f"the {preset} preset's",
            "stride": "set by test.stride" if self.stride is not None else f"the {preset} preset's",
        }

    def describe_signal(self, spec: SignalSpec, data_rate: float) -> str:
        """The line a run prints: the preset, how it was chosen, and the window and stride with
        where each came from."""
        preset, how = self.preset(data_rate)
        origin = self.window_origin(data_rate)
        return (
            f"signal: preset {preset} ({how}); window {spec.window} samples "
            f"({1000 * spec.window_seconds:.0f} ms, {origin['window']}), stride {spec.stride} samples "
            f"({1000 * spec.stride_seconds:.0f} ms, {origin['stride']})"
        )
