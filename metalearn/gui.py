"""``metaemg-tasks gui``: walk the recordings of a data root and approve them into a collection.

:class:`Walk` holds everything (position, approved set, undo stack, each recording's check, load
and save) and needs no display; :class:`App` is a thin Tk window over it with an embedded
matplotlib figure: the eight channels against time, the intent label shaded over them, and the
relax-open-relax-close-relax split. Invalid or unreadable recordings are shown with their error
and cannot be approved.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaemg.errors import DataError, MetaEMGError
from metalearn.builder import Check, check, discover
from metalearn.recording import INTENTS, Recording
from metalearn.tasks import TaskRef, load_collection, save_collection

DEFAULT_DIR = Path("data") / "task_collections"
MAX_PLOT_POINTS = 4000
SHORTCUTS = {  # action -> Tk key sequences (shown on the buttons)
    "approve": ("<Key-a>", "<Return>"),
    "undo": ("<Key-u>", "<Control-z>"),
    "back": ("<Key-b>", "<Left>"),
    "next": ("<Key-n>", "<Right>", "<space>"),
    "save": ("<Key-s>", "<Control-s>"),
}


@dataclass(frozen=True)
class Action:
    kind: str  # "approve" or "remove"
    ref: TaskRef
    index: int  # the position in the approved list (for remove: where it was)
    pos: int  # the walk position when it happened


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
        ref = ref or self.ref
        if ref not in self._checks:
            result, rec = check(self.root, ref, self.channels)
            self._checks[ref] = result
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

    def approve(self) -> str | None:
        """Approve the current recording and move to the next; the error when it cannot be."""
        c = self.check()
        if not c.valid:
            return f"not approved: {c.error}"
        if not self.is_approved():
            self.approved.append(self.ref)
            self.undo_stack.append(Action("approve", self.ref, len(self.approved) - 1, self.pos))
            self.dirty = True
        self.next()
        return None

    def remove(self) -> bool:
        """Take the current recording out of the collection (editing an existing one)."""
        if not self.is_approved():
            return False
        i = self.approved.index(self.ref)
        self.approved.pop(i)
        self.undo_stack.append(Action("remove", self.ref, i, self.pos))
        self.dirty = True
        return True

    def toggle(self) -> str | None:
        if self.is_approved():
            self.remove()
            return None
        return self.approve()

    def undo(self) -> Action | None:
        """Revert the last approve/remove and go back to where it happened."""
        if not self.undo_stack:
            return None
        a = self.undo_stack.pop()
        if a.kind == "approve":
            self.approved.remove(a.ref)
        else:
            self.approved.insert(a.index, a.ref)
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


def plot_recording(fig, rec: Recording | None, c: Check, title: str) -> None:
    """Draw the channels against time, shade open/close intent, mark the split."""
    fig.clear()
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=9)
    if rec is None:
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
        return
    step = max(1, rec.n_samples // MAX_PLOT_POINTS)
    t = rec.time[::step] - rec.time[0]
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")
    for ch in range(rec.n_channels):
        ax.plot(t, rec.emg[::step, ch], lw=0.6, label=f"emg{ch}", color=palette[ch % len(palette)])
    colours = {1: ("tab:green", "open"), 2: ("tab:red", "close")}
    labels = rec.labels
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    ends = np.r_[starts[1:], len(labels)]
    seen: set[int] = set()
    tt = rec.time - rec.time[0]
    for s, e in zip(starts, ends, strict=True):
        lab = int(labels[s])
        if lab in colours:
            colour, name = colours[lab]
            ax.axvspan(
                tt[s],
                tt[min(e, len(tt) - 1)],
                color=colour,
                alpha=0.15,
                label=None if lab in seen else f"intent {name}",
            )
            seen.add(lab)
    axl = ax.twinx()
    axl.step(t, labels[::step], where="post", color="black", lw=1.2)
    axl.set_yticks(range(len(INTENTS)), INTENTS)
    axl.set_ylim(-0.2, 2.8)
    if c.valid:
        ax.axvline(tt[c.split], color="black", ls="--", lw=1.2, label="split (support | query)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("EMG")
    ax.legend(loc="upper left", fontsize=7, ncol=6)


class App:
    """The Tk window over a :class:`Walk`."""

    def __init__(self, walk: Walk, out: Path | None = None, screen: str | None = None) -> None:
        import tkinter as tk

        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
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
        self.fig = Figure(figsize=(11, 5.4), dpi=100)
        self.canvas = FigureCanvasTkAgg(self.fig, master=self.root)
        self.message = tk.Label(self.root, anchor="w", fg="navy")
        self.message.pack(side="bottom", fill="x", padx=8, pady=(0, 6))
        bar = tk.Frame(self.root)
        bar.pack(side="bottom", fill="x", pady=6)
        self.canvas.get_tk_widget().pack(fill="both", expand=True)  # after the bottom rows: takes the rest
        self.buttons = {}
        for action, text in (
            ("approve", "Approve [a / Enter]"),
            ("undo", "Undo [u / Ctrl-Z]"),
            ("back", "Back [b / Left]"),
            ("next", "Next [n / Right / Space]"),
            ("save", "Save & Exit [s / Ctrl-S]"),
        ):
            b = tk.Button(bar, text=text, command=functools.partial(self.do, action), width=24, takefocus=0)
            b.pack(side="left", padx=4)
            self.buttons[action] = b
        for action, seqs in SHORTCUTS.items():

            def on_key(_e: tk.Event, a: str = action) -> None:
                self.do(a)

            for seq in seqs:
                self.root.bind_all(seq, on_key)
        self.root.protocol("WM_DELETE_WINDOW", self.close)
        self.refresh()
        self.root.title(f"metaemg-tasks gui - {walk.root}")  # last: tools find a ready window by its title

    def do(self, action: str) -> None:
        w, msg = self.walk, ""
        if action == "approve":
            was = w.is_approved()
            err = w.toggle()
            msg = err or (f"removed {w.ref}" if was else f"approved {w.approved[-1]}")
        elif action == "undo":
            a = w.undo()
            msg = "nothing to undo" if a is None else f"undid {a.kind} {a.ref}"
        elif action == "back":
            msg = "" if w.back() else "at the first recording"
        elif action == "next":
            msg = "" if w.next() else "last recording: Save & Exit when done"
        elif action == "save":
            self.save_and_exit()
            return
        self.refresh(msg)

    def refresh(self, message: str = "") -> None:
        w = self.walk
        c = w.check()
        self.where.config(text=w.where())
        approved = "  [in the collection]" if w.is_approved() else ""
        self.state.config(text=w.describe() + approved, fg="darkgreen" if c.valid else "firebrick")
        self.buttons["approve"].config(
            text="Remove [a / Enter]" if w.is_approved() else "Approve [a / Enter]",
            state="normal" if (c.valid or w.is_approved()) else "disabled",
        )
        if w.missing and not message:
            message = f"{len(w.missing)} task(s) of the collection are not under the root; they are kept"
        self.message.config(text=message)
        plot_recording(self.fig, w.recording(), c, f"{w.ref}")
        self.canvas.draw()

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
