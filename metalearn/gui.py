"""``metaemg-tasks gui``: walk the recordings of a data root and approve them into a collection.

:class:`Walk` holds everything (position, approved set, undo stack, each recording's check, load
and save, "approve all valid") and needs no display; :func:`plot_recording` draws one recording
on any matplotlib figure (Agg in the tests); :class:`App` is a thin Tk window over both with an
embedded figure and matplotlib's navigation toolbar (zoom, pan, home, back, forward, save): each
channel on its own axis against a shared time axis, the intent label shaded over them and drawn
as a strip below, and the relax-open-relax-close-relax split. Invalid or unreadable recordings
are shown with their error and cannot be approved.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metaemg.errors import DataError, MetaEMGError
from metalearn.builder import Check, check, discover
from metalearn.recording import INTENTS, Recording
from metalearn.tasks import TaskRef, load_collection, save_collection

DEFAULT_DIR = Path("data") / "task_collections"
MAX_PLOT_POINTS = 20000  # per channel: drawn sample by sample up to this, as a min/max envelope above
SHORTCUTS = {  # action -> Tk key sequences (shown on the buttons and the toolbar's tooltip line)
    "approve": ("<Key-a>", "<Return>"),
    "approve_all": ("<Key-A>",),
    "undo": ("<Key-u>", "<Control-z>"),
    "back": ("<Key-b>", "<Left>"),
    "next": ("<Key-n>", "<Right>", "<space>"),
    "save": ("<Key-s>", "<Control-s>"),
    # matplotlib's own keys for its toolbar
    "zoom": ("<Key-o>",),
    "pan": ("<Key-p>",),
    "home": ("<Key-h>", "<Home>"),
}
CHANNEL_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:cyan",
)
INTENT_COLOURS = {1: "tab:green", 2: "tab:red"}  # open, close (relax is left unshaded)
# the figure's margins (fractions): the title and the legend share the band above the first axis
LEFT, RIGHT, TOP, BOTTOM = 0.075, 0.985, 0.90, 0.09


@dataclass(frozen=True)
class Action:
    """One undoable step: a single approve or remove, or a whole "approve all valid"."""

    kind: str  # "approve", "remove" or "approve all valid"
    refs: tuple[TaskRef, ...]  # the recordings it approved or removed
    pos: int  # the walk position when it happened
    approved_before: tuple[TaskRef, ...]  # the collection before it, in order
    removed_before: frozenset[TaskRef] = field(default_factory=frozenset)

    @property
    def ref(self) -> TaskRef:
        return self.refs[0]

    def __str__(self) -> str:
        if self.kind == "approve all valid":
            n = len(self.refs)
            return f"approve all valid ({n} recording{'' if n == 1 else 's'})"
        return f"{self.kind} {self.ref}"


def _n(k: int, what: str) -> str:
    return f"{k} {what}" if k == 1 else f"{k} {what}s"


@dataclass(frozen=True)
class BulkApproval:
    """What :meth:`Walk.approve_all_valid` did, for the status line."""

    approved: tuple[TaskRef, ...]  # newly approved, in walk order
    already: int  # valid and approved before
    invalid: tuple[TaskRef, ...]  # cannot be approved: left undecided
    removed: tuple[TaskRef, ...]  # valid, but taken out by hand in this walk: left out

    def message(self) -> str:
        if self.approved:
            parts = [f"approved {_n(len(self.approved), 'valid recording')} (Undo reverts them in one step)"]
        else:
            parts = ["no valid recording left to approve"]
        if self.already:
            parts.append(f"{self.already} already approved")
        if self.invalid:
            parts.append(f"{_n(len(self.invalid), 'invalid recording')} left undecided (first: {self.invalid[0]})")
        if self.removed:
            parts.append(f"{len(self.removed)} you removed left out")
        return "; ".join(parts)


class Walk:
    """The walk through all recordings, session by session; pure (no Tk)."""

    def __init__(
        self,
        root: str | os.PathLike,
        sessions: dict[str, list[TaskRef]] | None = None,
        approved: list[TaskRef] | None = None,
        channels: int = 8,
        collection: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.sessions = discover(root) if sessions is None else sessions
        self.refs = [r for rs in self.sessions.values() for r in rs]
        self.session_names = list(self.sessions)
        self.channels = channels
        self.collection = collection
        self.approved: list[TaskRef] = list(dict.fromkeys(approved or []))
        self.removed: set[TaskRef] = set()  # taken out by hand: a decision "approve all valid" keeps
        on_disk = set(self.refs)
        self.missing = [r for r in self.approved if r not in on_disk]  # kept, reported
        self.undo_stack: list[Action] = []
        self.pos = 0
        self.dirty = False
        self._checks: dict[TaskRef, Check] = {}
        self._recording: tuple[TaskRef, Recording | None] | None = None
        if not self.refs:
            raise DataError("no recordings (<session>/<last two chars>_<condition>.csv)", path=self.root)

    @classmethod
    def open(cls, root: str | os.PathLike, collection: str | os.PathLike, channels: int = 8) -> Walk:
        """Edit an existing collection: its tasks start approved; the walk starts at the first."""
        return cls(root, approved=load_collection(collection), channels=channels, collection=Path(collection))

    # -- position ---------------------------------------------------------------------------------
    @property
    def ref(self) -> TaskRef:
        return self.refs[self.pos]

    @property
    def session_index(self) -> int:
        return self.session_names.index(self.ref.session)

    @property
    def recording_index(self) -> int:
        return self.sessions[self.ref.session].index(self.ref)

    def where(self) -> str:
        s, rs = self.ref.session, self.sessions[self.ref.session]
        return (
            f"session {self.session_index + 1} of {len(self.sessions)}: {s}    "
            f"recording {self.recording_index + 1} of {len(rs)}: {self.ref.condition}    "
            f"({self.pos + 1} of {len(self.refs)} overall, {len(self.approved)} approved)"
        )

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.refs) - 1

    def next(self) -> bool:
        if self.at_end:
            return False
        self.pos += 1
        return True

    def back(self) -> bool:
        if self.pos == 0:
            return False
        self.pos -= 1
        return True

    # -- checks -----------------------------------------------------------------------------------
    def check(self, ref: TaskRef | None = None) -> Check:
        """The recording's check (read once, then remembered); the current recording's data is kept
        in memory for plotting, another's is dropped."""
        ref = ref or self.ref
        if ref not in self._checks:
            result, rec = check(self.root, ref, self.channels)
            self._checks[ref] = result
            if ref == self.ref:
                self._recording = (ref, rec)
        return self._checks[ref]

    def recording(self) -> Recording | None:
        """The current recording (one kept in memory), or None when unreadable."""
        if self._recording is None or self._recording[0] != self.ref:
            self._checks.pop(self.ref, None)
            self.check()
        assert self._recording is not None  # check() has just read the current recording
        return self._recording[1]

    def describe(self) -> str:
        c = self.check()
        if not c.valid:
            return f"INVALID (cannot be approved): {c.error}"
        assert c.split is not None and c.n_samples is not None  # a valid check has both
        rec = self.recording()
        t = rec.time[c.split] - rec.time[0] if rec is not None else float("nan")
        return (
            f"valid: relax-open-relax-close-relax split at row {c.split + 1} (t = {t:.1f} s): "
            f"support {c.split} samples, query {c.n_samples - c.split}"
        )

    # -- approving --------------------------------------------------------------------------------
    def is_approved(self, ref: TaskRef | None = None) -> bool:
        return (ref or self.ref) in self.approved

    def _record(self, kind: str, refs: tuple[TaskRef, ...]) -> None:
        self.undo_stack.append(Action(kind, refs, self.pos, tuple(self.approved), frozenset(self.removed)))
        self.dirty = True

    def approve(self) -> str | None:
        """Approve the current recording and move to the next; the error when it cannot be."""
        c = self.check()
        if not c.valid:
            return f"not approved: {c.error}"
        if not self.is_approved():
            self._record("approve", (self.ref,))
            self.approved.append(self.ref)
            self.removed.discard(self.ref)
        self.next()
        return None

    def remove(self) -> bool:
        """Take the current recording out of the collection (editing an existing one)."""
        if not self.is_approved():
            return False
        self._record("remove", (self.ref,))
        self.approved.remove(self.ref)
        self.removed.add(self.ref)
        return True

    def toggle(self) -> str | None:
        if self.is_approved():
            self.remove()
            return None
        return self.approve()

    def approve_all_valid(self, progress: Callable[[int, int], None] | None = None) -> BulkApproval:
        """Approve every recording that passes its check and is not decided yet (not approved, not
        removed by hand in this walk), in walk order, as one undoable step; the position stays.
        ``progress(i, n)`` is called before each recording is checked (each is read once)."""
        new, invalid, removed, already = [], [], [], 0
        for i, ref in enumerate(self.refs):
            if progress is not None:
                progress(i, len(self.refs))
            if not self.check(ref).valid:
                invalid.append(ref)
            elif ref in self.approved:
                already += 1
            elif ref in self.removed:
                removed.append(ref)
            else:
                new.append(ref)
        if new:
            self._record("approve all valid", tuple(new))
            self.approved.extend(new)
        return BulkApproval(tuple(new), already, tuple(invalid), tuple(removed))

    def undo(self) -> Action | None:
        """Revert the last approve, remove or approve-all and go back to where it happened."""
        if not self.undo_stack:
            return None
        a = self.undo_stack.pop()
        self.approved = list(a.approved_before)
        self.removed = set(a.removed_before)
        self.pos = a.pos
        self.dirty = True
        return a

    # -- saving -----------------------------------------------------------------------------------
    def default_save_path(self, cwd: str | os.PathLike | None = None) -> Path:
        """The reopened collection itself, else ``data/task_collections/<root name>.json`` under
        ``cwd`` (a free name: ``_2``, ``_3``, ... when taken)."""
        if self.collection is not None:
            return self.collection
        base = Path(cwd or Path.cwd()) / DEFAULT_DIR
        name = self.root.resolve().name or "collection"
        path, k = base / f"{name}.json", 2
        while path.exists():
            path, k = base / f"{name}_{k}.json", k + 1
        return path

    def save(self, path: str | os.PathLike) -> Path:
        path = save_collection(path, list(self.approved))
        self.collection = Path(path)
        self.dirty = False
        return path


def display_points(t: np.ndarray, y: np.ndarray, max_points: int = MAX_PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``t`` (n,) and ``y`` (n, channels) as drawn: every sample up to ``max_points``; above, each
    bin of k samples as its minimum and maximum (at the bin's first time), so spikes and the
    envelope survive, which a stride would drop."""
    n = len(t)
    if n <= max_points:
        return t, y
    k = -(-2 * n // max_points)  # ceil(2n / max_points): two points per bin
    m = n // k * k
    bins = y[:m].reshape(m // k, k, -1)
    lo_hi = np.stack([bins.min(axis=1), bins.max(axis=1)], axis=1).reshape(-1, y.shape[1])
    tt = np.repeat(t[:m:k], 2)
    if m < n:  # the last, partial bin: as it is
        tt, lo_hi = np.r_[tt, t[m:]], np.r_[lo_hi, y[m:]]
    return tt, lo_hi


def intent_segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(first row, row after the last, label) for each run of one label."""
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    ends = np.r_[starts[1:], len(labels)]
    return [(int(s), int(e), int(labels[s])) for s, e in zip(starts, ends, strict=True)]


def plot_recording(fig, rec: Recording | None, c: Check, title: str) -> list:
    """Draw one recording on ``fig``: one axis per channel (``emg0`` ..), all sharing the time
    axis so zooming or panning one moves all; the open/close intent shaded over every channel and
    drawn as a label strip below; the support | query split as a dashed line. The legend sits in
    the band above the first axis, clear of the data. Returns the channel axes (the label strip is
    ``fig.axes[-1]``); an unreadable recording gets one axis with its error and returns ``[]``."""
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig.clear()
    if rec is None:
        _plot_unreadable(fig, c, title)
        return []
    n_ch = rec.n_channels
    axes = fig.subplots(
        n_ch + 1,
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={
            "height_ratios": [1.0] * n_ch + [0.9],
            "hspace": 0.2,
            "left": LEFT,
            "right": RIGHT,
            "top": TOP,
            "bottom": BOTTOM,
        },
    )[:, 0]
    channel_axes, strip = list(axes[:n_ch]), axes[n_ch]
    tt = rec.time - rec.time[0]
    t, y = display_points(tt, rec.emg)
    segments = intent_segments(rec.labels)
    for ch, ax in enumerate(channel_axes):
        ax.plot(t, y[:, ch], lw=0.5, color=CHANNEL_COLOURS[ch % len(CHANNEL_COLOURS)])
        ax.set_ylabel(f"emg{ch}", rotation=0, ha="right", va="center", fontsize=8, labelpad=4)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=2))
        ax.tick_params(axis="y", labelsize=6, length=2, pad=1)
        ax.tick_params(axis="x", length=0)
    _plot_labels(channel_axes, strip, tt, segments)
    handles: list[Artist] = [
        Patch(color=INTENT_COLOURS[1], alpha=0.35, label="intent open"),
        Patch(color=INTENT_COLOURS[2], alpha=0.35, label="intent close"),
    ]
    if c.valid and c.split is not None:
        for ax in axes:
            ax.axvline(tt[c.split], color="black", ls="--", lw=1.0)
        handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label="split (support | query)"))
    channel_axes[0].set_title(f"{title}    (each channel on its own scale)", loc="left", fontsize=9, pad=6)
    fig.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(RIGHT, TOP),
        bbox_transform=fig.transFigure,
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
    )
    return channel_axes


def _plot_unreadable(fig, c: Check, title: str) -> None:
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=9)
    ax.text(
        0.5,
        0.5,
        "cannot read this recording\n" + (c.error or ""),
        ha="center",
        va="center",
        wrap=True,
        color="firebrick",
        transform=ax.transAxes,
        fontsize=9,
    )
    ax.set_axis_off()


def _plot_labels(channel_axes: list, strip, tt: np.ndarray, segments: list) -> None:
    """The open/close intent shaded over every channel, and the label strip below them."""
    end = tt[-1]
    for s, e, lab in segments:
        if lab in INTENT_COLOURS:
            x0, x1 = tt[s], tt[e] if e < len(tt) else end
            for ax in channel_axes:
                ax.axvspan(x0, x1, color=INTENT_COLOURS[lab], alpha=0.15, lw=0)
            strip.axvspan(x0, x1, color=INTENT_COLOURS[lab], alpha=0.35, lw=0)
    # the label as a step from its change points: exact, whatever the decimation above
    xs = np.r_[[tt[s] for s, _, _ in segments], end]
    ys = np.r_[[lab for _, _, lab in segments], segments[-1][2]]
    strip.step(xs, ys, where="post", color="black", lw=1.0)
    strip.set_yticks(range(len(INTENTS)), INTENTS, fontsize=7)
    strip.set_ylim(-0.4, len(INTENTS) - 0.6)
    strip.set_xlim(0, end)  # the whole recording, edge to edge (the toolbar's Home)
    strip.set_xlabel("time (s)", fontsize=9)
    strip.tick_params(axis="x", labelsize=8)


BUTTONS = (  # action, label (keys from SHORTCUTS)
    ("approve", "Approve [a/Enter]"),
    ("approve_all", "Approve all valid [A]"),
    ("undo", "Undo [u/Ctrl-Z]"),
    ("back", "Back [b/Left]"),
    ("next", "Next [n/Right/Space]"),
    ("save", "Save & Exit [s/Ctrl-S]"),
)


class App:
    """The Tk window over a :class:`Walk`: the figure, matplotlib's navigation toolbar under it
    (zoom, pan, home, back, forward, save the figure), the buttons and a status line. The keys
    are bound to this window only, so typing in a dialog (the save-as file name) triggers none."""

    def __init__(self, walk: Walk, out: Path | None = None, screen: str | None = None) -> None:
        import tkinter as tk

        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
        from matplotlib.figure import Figure

        self.tk = tk
        self.walk = walk
        self.out = out
        self.saved_to: Path | None = None
        self.root = tk.Tk(screenName=screen, className="metaemg-tasks")
        self.root.geometry("1200x780")
        self.where = tk.Label(self.root, anchor="w", font=("TkDefaultFont", 11, "bold"))
        self.where.pack(fill="x", padx=8, pady=(6, 0))
        self.state = tk.Label(self.root, anchor="w", justify="left", wraplength=1150)
        self.state.pack(fill="x", padx=8)
        self.fig = Figure(figsize=(11, 5.6), dpi=100)
        self.canvas = FigureCanvasTkAgg(self.fig, master=self.root)
        self.message = tk.Label(self.root, anchor="w", justify="left", fg="navy", wraplength=1150)
        self.message.pack(side="bottom", fill="x", padx=8, pady=(0, 6))
        bar = tk.Frame(self.root)
        bar.pack(side="bottom", fill="x", pady=(2, 4))
        self.toolbar = NavigationToolbar2Tk(self.canvas, self.root, pack_toolbar=False)
        self.toolbar.pack(side="bottom", fill="x")
        self.canvas.get_tk_widget().pack(fill="both", expand=True)  # after the bottom rows: takes the rest
        self.buttons = {}
        for action, text in BUTTONS:
            b = tk.Button(bar, text=text, command=functools.partial(self.do, action), takefocus=0)
            b.pack(side="left", padx=3, expand=True, fill="x")
            self.buttons[action] = b
        for action, seqs in SHORTCUTS.items():

            def on_key(_e: tk.Event, a: str = action) -> str:
                self.do(a)
                return "break"

            for seq in seqs:
                self.root.bind(seq, on_key)  # the window and its widgets; not other toplevels
        self.root.protocol("WM_DELETE_WINDOW", self.close)
        self.refresh()
        self.root.title(f"metaemg-tasks gui - {walk.root}")  # last: tools find a ready window by its title

    def do(self, action: str) -> None:
        w, msg = self.walk, ""
        if action == "approve":
            was = w.is_approved()
            err = w.toggle()
            msg = err or (f"removed {w.ref}" if was else f"approved {w.approved[-1]}")
        elif action == "approve_all":
            msg = w.approve_all_valid(self._progress).message()
        elif action == "undo":
            a = w.undo()
            msg = "nothing to undo" if a is None else f"undid {a}"
        elif action == "back":
            msg = "" if w.back() else "at the first recording"
        elif action == "next":
            msg = "" if w.next() else "last recording: Save & Exit when done"
        elif action == "save":
            self.save_and_exit()
            return
        elif action in ("zoom", "pan", "home"):
            getattr(self.toolbar, action)()  # as matplotlib's own o, p, h keys
            return
        self.refresh(msg)

    def _progress(self, i: int, n: int) -> None:
        if i % 10 == 0:
            self.message.config(text=f"checking recording {i + 1} of {n} ...")
            self.root.update_idletasks()

    def refresh(self, message: str = "") -> None:
        w = self.walk
        c = w.check()
        self.where.config(text=w.where())
        approved = "  [in the collection]" if w.is_approved() else ""
        self.state.config(text=w.describe() + approved, fg="darkgreen" if c.valid else "firebrick")
        self.buttons["approve"].config(
            text="Remove [a/Enter]" if w.is_approved() else "Approve [a/Enter]",
            state="normal" if (c.valid or w.is_approved()) else "disabled",
        )
        if w.missing and not message:
            message = f"{len(w.missing)} task(s) of the collection are not under the root; they are kept"
        self.message.config(text=message)
        plot_recording(self.fig, w.recording(), c, f"{w.ref}")
        self.canvas.draw()
        self.toolbar.update()  # a new recording: forget the last one's zoom history; Home shows all

    def ask_path(self) -> Path | None:
        from tkinter import filedialog

        default = self.walk.default_save_path()
        default.parent.mkdir(parents=True, exist_ok=True)
        got = filedialog.asksaveasfilename(
            parent=self.root,
            title="Save the task collection",
            initialdir=str(default.parent),
            initialfile=default.name,
            defaultextension=".json",
            filetypes=[("task collection", "*.json")],
        )
        return Path(got) if got else None

    def save_and_exit(self) -> None:
        path = self.out or self.ask_path()
        if path is None:
            self.refresh("not saved (cancelled)")
            return
        self.saved_to = self.walk.save(path)
        self.root.destroy()

    def close(self) -> None:
        from tkinter import messagebox

        if self.walk.dirty:
            answer = messagebox.askyesnocancel(
                "Unsaved changes", "Save the collection before closing?", parent=self.root
            )
            if answer is None:
                return
            if answer:
                self.save_and_exit()
                return
        self.root.destroy()

    def run(self) -> Path | None:
        self.root.mainloop()
        return self.saved_to


def run_gui(root: Path, out: Path | None = None, open_collection: Path | None = None, channels: int = 8) -> int:
    try:
        import tkinter  # noqa: F401
    except ImportError as exc:
        from metaemg.errors import MissingDependencyError

        raise MissingDependencyError(f"the GUI needs Tk (apt-get install python3-tk): {exc}") from None
    walk = Walk.open(root, open_collection, channels) if open_collection else Walk(root, channels=channels)
    try:
        app = App(walk, out)
    except Exception as exc:  # TclError: no display
        if type(exc).__name__ == "TclError":
            raise MetaEMGError(f"cannot open a window: {exc} (is DISPLAY set?)") from None
        raise
    saved = app.run()
    if saved is None:
        print("closed without saving", file=sys.stderr)
        return 1
    print(f"saved {len(walk.approved)} tasks to {saved}")
    return 0
