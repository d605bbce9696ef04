"""Lab Streaming Layer pieces shared by the daemon's reader and the calibration recorder: which
stream to take (:class:`StreamSelector`, the ``lsl`` section of both tools' configs), what a
resolved stream says about itself, and keeping liblsl's INFO lines off stderr. pylsl is passed
in or imported inside the functions, so importing this module does not load liblsl."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from metaemg.typedconfig import Section, is_number, require

WARNINGS, FATAL_ONLY = -1, -3  # liblsl's (loguru's) log levels
DEFAULT_STREAM_NAME = "MyHand-EMG"
SELECTORS = ("name", "type", "source_id")
GATHER_S = 0.2  # once one stream is found, how long to look for a second one that matches too


@dataclass(frozen=True)
class StreamSelector(Section):
    """Which armband stream to take (at least one of name, type, source_id), and how long to look
    for it. The tools derive their ``lsl`` section from it and add their own keys."""

    KEY = "lsl"
    name: str | None = DEFAULT_STREAM_NAME
    type: str | None = None
    source_id: str | None = None
    resolve_timeout_s: float = 2.0

    def check(self, key: str) -> None:
        values = tuple(getattr(self, attr) for attr in SELECTORS)
        require(any(values), key, "give at least one of name, type, source_id", values)
        for attr, value in zip(SELECTORS, values, strict=True):
            require(
                value is None or ("'" not in value and value.strip() == value and value != ""),
                f"{key}.{attr}",
                "must be a non-empty string without quotes or surrounding spaces",
                value,
            )
        require(
            is_number(self.resolve_timeout_s) and 0 < self.resolve_timeout_s <= 60,
            f"{key}.resolve_timeout_s",
            "must be in (0, 60]",
            self.resolve_timeout_s,
        )

    def predicate(self) -> str:
        """The LSL XPath predicate matching every property given."""
        return " and ".join(f"{attr}='{getattr(self, attr)}'" for attr in SELECTORS if getattr(self, attr))


@dataclass(frozen=True)
class StreamDesc:
    """What the resolved stream says about itself."""

    name: str
    type: str
    source_id: str
    hostname: str
    uid: str
    channels: int
    rate: float
    channel_format: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """For messages: the name and host quoted (a stream's fields are the sender's words, and may
        carry a newline or markup)."""
        return (
            f"{self.name!r} ({self.channels} channels, {self.rate:g} Hz, {self.channel_format}, on {self.hostname!r})"
        )


def identity(desc: StreamDesc) -> tuple[str, str]:
    """Which armband a stream is: its source id and host (its uid when it has no source id, which
    then changes when the sender restarts)."""
    return (desc.source_id or f"uid {desc.uid}", desc.hostname)


def who(desc: StreamDesc) -> str:
    sid, host = identity(desc)
    return f"source id {sid!r} on {host!r}"


def gather(pylsl, predicate: str, found: list) -> list:
    """Every stream that matches ``predicate``: those ``found`` already and any other seen within
    :data:`GATHER_S` (each once, by uid)."""
    more = pylsl.resolve_bypred(predicate, 2, GATHER_S)
    return list({info.uid(): info for info in [*found, *more]}.values())


def choose(descs: list[StreamDesc], bound: tuple[str, str] | None) -> tuple[int | None, str, list[str]]:
    """Which of the streams found (every one matching the selector) is *the* armband: ``(index, "",
    [])``, or ``(None, kind, candidates)`` with ``kind`` "foreign" (bound to an armband that is not
    among them) or "ambiguous" (not bound, and more than one armband matches), ``candidates``
    naming each armband found. One rule for the daemon's reader and the calibration's recorder."""
    candidates = sorted({who(d) for d in descs})
    if bound is not None:
        mine = [i for i, d in enumerate(descs) if identity(d) == bound]
        return (mine[0], "", []) if mine else (None, "foreign", candidates)
    if len({identity(d) for d in descs}) > 1:
        return None, "ambiguous", candidates
    return 0, "", []


def describe(info) -> StreamDesc:
    """The :class:`StreamDesc` of a ``pylsl.StreamInfo``."""
    from pylsl import cf_double64, cf_float32, cf_int8, cf_int16, cf_int32, cf_int64, cf_string

    formats = {
        cf_float32: "float32",
        cf_double64: "double64",
        cf_string: "string",
        cf_int32: "int32",
        cf_int16: "int16",
        cf_int8: "int8",
        cf_int64: "int64",
    }
    return StreamDesc(
        name=info.name(),
        type=info.type(),
        source_id=info.source_id(),
        hostname=info.hostname(),
        uid=info.uid(),
        channels=info.channel_count(),
        rate=float(info.nominal_srate()),
        channel_format=formats.get(info.channel_format(), str(info.channel_format())),
    )


def quiet_liblsl(pylsl, level: int = WARNINGS) -> None:
    """liblsl logs INFO lines to stderr; keep only those at ``level`` and above (the daemon:
    :data:`FATAL_ONLY`, as its own JSON log reports every stream event and a raw liblsl line would
    break that log). Only effective before liblsl's first use in the process (later a no-op)."""
    try:
        pylsl.set_config_content(f"[log]\nlevel = {int(level)}\n")
    except Exception:
        pass
