"""metaemg-tasks gui: the walk state without a display, then the real window under Xvfb, driven
with Tk events in-process and with xdotool against the real command.

The ``gui`` tests need Xvfb, xdotool and ImageMagick's ``import`` (Debian: ``apt-get install
xvfb xdotool imagemagick``). Without them they skip on a workstation and FAIL when ``CI`` is set.
Screenshots go to the test's tmp directory, and also to ``$METAEMG_ARTIFACTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import myhand_like_csv

from metaemg.errors import DataError
from metalearn.gui import Walk, display_points, plot_recording
from metalearn.tasks import TaskRef, load_collection, save_collection

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("Xvfb", "xdotool", "import")


def make_root(tmp: Path) -> Path:
    """Two sessions: s1_p1 with two valid recordings and one without a cycle; s2_p2 with one valid
    recording and one unreadable file."""
    root = tmp / "data"
    myhand_like_csv(root / "s1_p1" / "p1_a.csv", seconds=6, seed=1)
    myhand_like_csv(root / "s1_p1" / "p1_b.csv", seconds=6, seed=2)
    myhand_like_csv(root / "s1_p1" / "p1_c_bad.csv", seconds=6, labels=np.repeat([0, 1], 300))
    myhand_like_csv(root / "s2_p2" / "p2_a.csv", seconds=6, seed=3)
    (root / "s2_p2" / "p2_z_broken.csv").write_bytes(b"\xff\xfe garbage\n1,2,3\n")
    return root


# -- the walk, no display ----------------------------------------------------------------------


def test_walk_positions_and_checks(tmp_path):
    w = Walk(make_root(tmp_path))
    assert [str(r) for r in w.refs] == ["s1_p1/a", "s1_p1/b", "s1_p1/c_bad", "s2_p2/a", "s2_p2/z_broken"]
    assert w.where().startswith("session 1 of 2: s1_p1    recording 1 of 3: a")
    assert w.describe().startswith("valid: relax-open-relax-close-relax split at row ")
    assert not w.back()
    for _ in range(4):
        assert w.next()
    assert not w.next() and w.at_end
    assert w.where().startswith("session 2 of 2: s2_p2    recording 2 of 2: z_broken")
    assert w.describe().startswith("INVALID (cannot be approved): ") and w.recording() is None
    w.back()
    w.back()
    assert "no complete relax-open-relax-close-relax cycle" in w.describe()
    assert w.recording() is not None  # readable, so it can still be plotted


def test_walk_approve_undo_remove_and_save(tmp_path):
    w = Walk(make_root(tmp_path))
    assert w.approve() is None and w.pos == 1  # approves a, moves on
    assert w.approve() is None and w.pos == 2
    err = w.approve()  # c_bad: refused, stays
    assert err.startswith("not approved: ") and w.pos == 2 and len(w.approved) == 2
    w.next()
    w.next()
    assert w.approve().startswith("not approved: ") and w.pos == 4  # broken file: refused
    a = w.undo()
    assert a.kind == "approve" and str(a.ref) == "s1_p1/b" and w.pos == 1
    w.back()
    assert w.is_approved() and w.toggle() is None and not w.is_approved()  # remove a
    assert w.undo().kind == "remove" and w.approved == [TaskRef("s1_p1", "a")]
    assert w.undo() is not None and w.approved == [] and w.undo() is None
    w.pos = 3
    w.approve()
    w.pos = 0
    w.approve()
    out = w.save(tmp_path / "out" / "c.json")
    assert json.loads(out.read_text()) == [
        {"session": "s2_p2", "condition": "a"},
        {"session": "s1_p1", "condition": "a"},
    ]
    assert not w.dirty and list(out.parent.iterdir()) == [out]  # atomic: no temporary left


def test_walk_reopens_a_collection(tmp_path):
    root = make_root(tmp_path)
    coll = save_collection(tmp_path / "c.json", [TaskRef("s1_p1", "b"), TaskRef("gone_p9", "x")])
    w = Walk.open(root, coll)
    assert w.approved == [TaskRef("s1_p1", "b"), TaskRef("gone_p9", "x")]
    assert w.missing == [TaskRef("gone_p9", "x")]
    w.next()
    assert w.is_approved()
    w.remove()
    assert w.default_save_path() == coll
    w.save(w.default_save_path())
    assert load_collection(coll) == [TaskRef("gone_p9", "x")]
    with pytest.raises(DataError, match="not found"):
        Walk.open(root, tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no recordings"):
        Walk(tmp_path / "empty")


def test_default_save_path(tmp_path):
    w = Walk(make_root(tmp_path))
    cwd = tmp_path / "project"
    assert w.default_save_path(cwd) == cwd / "data" / "task_collections" / "data.json"
    save_collection(cwd / "data" / "task_collections" / "data.json", [])
    save_collection(cwd / "data" / "task_collections" / "data_2.json", [])
    assert w.default_save_path(cwd) == cwd / "data" / "task_collections" / "data_3.json"
    w.save(tmp_path / "mine.json")
    assert w.default_save_path(cwd) == tmp_path / "mine.json"  # then the file it was saved to


def test_approve_all_valid_then_undo_in_one_step(tmp_path):
    w = Walk(make_root(tmp_path))
    seen = []
    bulk = w.approve_all_valid(progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]
    assert w.approved == [TaskRef("s1_p1", "a"), TaskRef("s1_p1", "b"), TaskRef("s2_p2", "a")]  # walk order
    assert bulk.invalid == (TaskRef("s1_p1", "c_bad"), TaskRef("s2_p2", "z_broken")) and w.pos == 0
    assert bulk.message() == (
        "approved 3 valid recordings (Undo reverts them in one step); "
        "2 invalid recordings left undecided (first: s1_p1/c_bad)"
    )
    again = w.approve_all_valid()  # nothing new: no undo step of its own
    assert again.message() == (
        "no valid recording left to approve; 3 already approved; "
        "2 invalid recordings left undecided (first: s1_p1/c_bad)"
    )
    a = w.undo()
    assert str(a) == "approve all valid (3 recordings)" and w.approved == [] and w.undo() is None


def test_approve_all_valid_keeps_decisions_made_by_hand(tmp_path):
    root = make_root(tmp_path)
    coll = save_collection(tmp_path / "c.json", [TaskRef("s1_p1", "b")])
    w = Walk.open(root, coll)
    w.pos = 1
    assert w.remove() and w.removed == {TaskRef("s1_p1", "b")}  # b taken out by hand
    w.pos = 3
    w.approve()  # s2_p2/a by hand
    w.pos = 2
    bulk = w.approve_all_valid()
    assert bulk.approved == (TaskRef("s1_p1", "a"),) and bulk.removed == (TaskRef("s1_p1", "b"),)
    assert bulk.message() == (
        "approved 1 valid recording (Undo reverts them in one step); 1 already approved; "
        "2 invalid recordings left undecided (first: s1_p1/c_bad); 1 you removed left out"
    )
    assert w.approved == [TaskRef("s2_p2", "a"), TaskRef("s1_p1", "a")] and w.pos == 2
    assert w.undo().kind == "approve all valid" and w.approved == [TaskRef("s2_p2", "a")] and w.pos == 2
    assert str(w.undo()) == "approve s2_p2/a" and w.approved == [] and w.pos == 3
    assert w.undo().kind == "remove" and w.approved == [TaskRef("s1_p1", "b")] and w.removed == set()
    w.pos = 1
    w.remove()
    w.approve()  # approved again by hand: no longer a removal to respect
    assert w.removed == set() and w.approve_all_valid().approved == (TaskRef("s1_p1", "a"), TaskRef("s2_p2", "a"))


def test_display_points_keep_every_sample_or_the_min_max_envelope():
    t = np.arange(100) / 100
    y = np.arange(200.0).reshape(100, 2)
    tt, yy = display_points(t, y, max_points=100)
    assert tt is t and yy is y
    rng = np.random.default_rng(0)
    n = 100_003
    t = np.arange(n) / 200.0
    y = rng.normal(size=(n, 8))
    y[54_321, 3] = 50.0  # one spike: a stride would drop it
    tt, yy = display_points(t, y, max_points=2000)
    assert len(tt) == len(yy) <= 2000 + 100 and yy.shape[1] == 8
    assert np.all(np.diff(tt) >= 0) and tt[0] == 0 and tt[-1] == t[-1]
    assert yy[:, 3].max() == 50.0 and np.allclose(yy.min(axis=0), y.min(axis=0))


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_plot_one_axis_per_channel_shared_time_legend_clear(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = Walk(make_root(tmp_path))
    fig = Figure(figsize=(11, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    rec = w.recording()
    channel_axes = plot_recording(fig, rec, w.check(), str(w.ref))
    fig.canvas.draw()
    strip = fig.axes[-1]
    assert len(channel_axes) == 8 and fig.axes == [*channel_axes, strip]
    assert [ax.get_ylabel() for ax in channel_axes] == [f"emg{i}" for i in range(8)]
    for ch, ax in enumerate(channel_axes):  # each channel alone on its axis, every sample drawn
        (line,) = ax.get_lines()[:1]
        assert np.array_equal(line.get_ydata(), rec.emg[:, ch])
        assert np.array_equal(ax.get_lines()[1].get_xdata(), [rec.time[w.check().split] - rec.time[0]] * 2)
    assert [t.get_text() for t in strip.get_yticklabels()] == ["relax", "open", "close"]
    assert strip.get_xlim() == (0.0, rec.time[-1] - rec.time[0])
    channel_axes[3].set_xlim(1.0, 2.0)  # a zoom on one channel (the toolbar does the same)
    assert {ax.get_xlim() for ax in fig.axes} == {(1.0, 2.0)}  # moves every channel and the strip
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["intent open", "intent close", "split (support | query)"]
    box = legend.get_window_extent()
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)  # on the figure
    assert not any(_boxes_overlap(box, ax.get_window_extent()) for ax in fig.axes)  # clear of the data
    assert not _boxes_overlap(box, channel_axes[0].title.get_window_extent())

    w.pos = 2  # readable, no complete cycle: drawn the same, without a split
    assert len(plot_recording(fig, w.recording(), w.check(), str(w.ref))) == 8
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["intent open", "intent close"]
    w.pos = 4  # unreadable: one axis with the error
    assert plot_recording(fig, w.recording(), w.check(), str(w.ref)) == []
    assert len(fig.axes) == 1 and "cannot read" in fig.axes[0].texts[0].get_text()


# -- the window under Xvfb ---------------------------------------------------------------------


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        msg = f"missing {', '.join(missing)} (apt-get install xvfb xdotool imagemagick)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def xvfb():
    """A private X server: Xvfb picks a free display (-displayfd); wait for its socket."""
    _need_tools()
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    try:
        deadline = time.monotonic() + 20
        text = b""
        while not text.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                pytest.fail("Xvfb did not report a display within 20 s")
            chunk = os.read(r, 16)
            if not chunk:
                pytest.fail(f"Xvfb exited: {proc.stderr.read().decode(errors='replace')[-500:]}")
            text += chunk
        display = ":" + text.decode().strip()
        sock = Path(f"/tmp/.X11-unix/X{display[1:]}")
        while not sock.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"no X socket {sock} within 20 s")
            time.sleep(0.05)
        yield display
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def screenshot(display: str, path: Path) -> Path:
    subprocess.run(
        ["import", "-display", display, "-window", "root", str(path)], check=True, timeout=30, capture_output=True
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("METAEMG_ARTIFACTS"):
        dest = Path(os.environ["METAEMG_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
    return path


@pytest.mark.gui
def test_window_keys_and_buttons_in_process(xvfb, tmp_path):
    from metalearn.gui import App

    root = make_root(tmp_path)
    out = tmp_path / "saved.json"
    app = App(Walk(root), out=out, screen=xvfb)
    try:
        tk = app.root
        tk.update()

        def key(seq: str) -> None:
            tk.event_generate(seq)
            tk.update()

        assert app.where.cget("text").startswith("session 1 of 2: s1_p1    recording 1 of 3: a")
        assert app.state.cget("text").startswith("valid: ")
        key("<Key-a>")  # approve a -> b
        key("<Return>")  # approve b -> c_bad
        assert app.state.cget("text").startswith("INVALID") and app.buttons["approve"].cget("state") == "disabled"
        key("<Key-a>")  # refused
        assert app.message.cget("text").startswith("not approved: ") and app.walk.pos == 2
        key("<Control-z>")  # undo b
        assert app.walk.pos == 1 and app.message.cget("text") == "undid approve s1_p1/b"
        key("<Right>")
        key("<Key-n>")  # -> s2_p2/a
        assert app.where.cget("text").startswith("session 2 of 2: s2_p2    recording 1 of 2: a")
        app.buttons["approve"].invoke()  # -> z_broken
        assert "INVALID" in app.state.cget("text") and "cannot read" in app.fig.axes[0].texts[0].get_text()
        key("<space>")
        assert app.message.cget("text").startswith("last recording")
        key("<Left>")
        key("<Key-b>")
        key("<Key-b>")  # back to s1_p1/b, approved no more
        assert app.walk.ref == TaskRef("s1_p1", "b") and app.buttons["approve"].cget("text").startswith("Approve")
        screenshot(xvfb, tmp_path / "gui_in_process.png")
        app.buttons["save"].invoke()  # Save & Exit: --out given, no dialog; the window is gone
        assert app.saved_to == out
    finally:
        try:
            app.root.destroy()
        except Exception:  # already destroyed by Save & Exit
            pass
    assert json.loads(out.read_text()) == [
        {"session": "s1_p1", "condition": "a"},
        {"session": "s2_p2", "condition": "a"},
    ]


@pytest.mark.gui
def test_window_toolbar_zoom_and_approve_all(xvfb, tmp_path):
    from matplotlib.backends.backend_tkagg import NavigationToolbar2Tk

    from metalearn.gui import App

    app = App(Walk(make_root(tmp_path)), out=tmp_path / "saved.json", screen=xvfb)
    try:
        tk = app.root
        tk.update()
        assert isinstance(app.toolbar, NavigationToolbar2Tk) and app.toolbar.winfo_ismapped()
        assert app.toolbar.canvas is app.canvas

        def key(seq: str, widget=None) -> None:
            (widget or tk).event_generate(seq)
            tk.update()

        # zoom: o, then drag a rectangle over emg0 with the mouse; every channel follows in time
        app.canvas.draw()
        full = app.fig.axes[0].get_xlim()
        key("<Key-o>")
        assert app.toolbar.mode == "zoom rect"
        box = app.fig.axes[0].get_window_extent()
        widget, height = app.canvas.get_tk_widget(), app.fig.bbox.height
        x0, x1 = box.x0 + 0.25 * box.width, box.x0 + 0.5 * box.width
        y0, y1 = height - (box.y0 + 0.2 * box.height), height - (box.y0 + 0.8 * box.height)  # Tk: y down
        widget.event_generate("<Motion>", x=int(x0), y=int(y0))
        widget.event_generate("<ButtonPress-1>", x=int(x0), y=int(y0))
        widget.event_generate("<Motion>", x=int(x1), y=int(y1), state=256)  # dragging: button 1 held
        widget.event_generate("<ButtonRelease-1>", x=int(x1), y=int(y1))
        tk.update()
        zoomed = app.fig.axes[0].get_xlim()
        span = full[1] - full[0]
        assert zoomed[0] == pytest.approx(full[0] + 0.25 * span, abs=0.02 * span)
        assert zoomed[1] == pytest.approx(full[0] + 0.5 * span, abs=0.02 * span)
        assert {ax.get_xlim() for ax in app.fig.axes} == {zoomed}
        key("<Key-h>")  # home
        assert app.fig.axes[0].get_xlim() == full
        key("<Key-o>")  # zoom off again
        assert app.toolbar.mode == ""
        key("<Key-p>")
        assert app.toolbar.mode == "pan/zoom"
        key("<Key-p>")

        key("<Key-a>")  # approve a by hand -> b
        key("<Key-A>")  # approve all valid: b and s2_p2/a
        assert app.walk.approved == [TaskRef("s1_p1", "a"), TaskRef("s1_p1", "b"), TaskRef("s2_p2", "a")]
        assert app.message.cget("text") == (
            "approved 2 valid recordings (Undo reverts them in one step); 1 already approved; "
            "2 invalid recordings left undecided (first: s1_p1/c_bad)"
        )
        assert app.where.cget("text").endswith("(2 of 5 overall, 3 approved)")
        assert app.buttons["approve_all"].cget("text") == "Approve all valid [A]"
        key("<Control-z>")  # one step
        assert app.walk.approved == [TaskRef("s1_p1", "a")]
        assert app.message.cget("text") == "undid approve all valid (2 recordings)"
        app.buttons["approve_all"].invoke()
        assert len(app.walk.approved) == 3

        # a second window (the save dialog's kind): typing there triggers none of the shortcuts
        top = app.tk.Toplevel(tk)
        entry = app.tk.Entry(top)
        entry.pack()
        entry.focus_force()  # generated keys go to the focus, as typed ones do
        tk.update()
        assert tk.focus_get() is entry
        before = (app.walk.pos, list(app.walk.approved))
        for seq in ("<Key-a>", "<Key-u>", "<Key-n>", "<Key-s>", "<Key-A>"):
            key(seq, entry)
        assert (app.walk.pos, app.walk.approved) == before and app.saved_to is None
        top.destroy()
        screenshot(xvfb, tmp_path / "gui_toolbar.png")
    finally:
        tk.destroy()


@pytest.mark.gui
def test_command_driven_by_xdotool_edits_a_collection(xvfb, tmp_path):
    root = make_root(tmp_path)
    coll = save_collection(tmp_path / "edit.json", [TaskRef("s1_p1", "a")])
    out = tmp_path / "edited.json"
    env = dict(os.environ, DISPLAY=xvfb)
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/metaemg-tasks"), "gui", "--root", str(root), "--open", str(coll), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        wid = ""
        while not wid:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the window did not appear within 30 s"
            wid = subprocess.run(
                ["xdotool", "search", "--onlyvisible", "--name", "^metaemg-tasks gui"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout.split("\n")[0]
            time.sleep(0.1)
        # the window takes its title last, once the first recording is drawn (metalearn/gui.py):
        # found by that title, it is ready for keys
        subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=env, check=True, timeout=10)
        # a: remove the reopened s1_p1/a; Right, a: approve b; Right, a: approve s2_p2/a; Ctrl-Z: undo that
        for k in ("a", "Right", "a", "Right", "a", "ctrl+z"):
            subprocess.run(["xdotool", "key", "--delay", "50", k], env=env, check=True, timeout=10)
        time.sleep(0.5)  # only for the picture: nothing asserted waits on it (the keys are queued in order)
        screenshot(xvfb, tmp_path / "gui_command.png")
        subprocess.run(["xdotool", "key", "s"], env=env, check=True, timeout=10)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == f"saved 1 tasks to {out}"
    assert json.loads(out.read_text()) == [{"session": "s1_p1", "condition": "b"}]
    assert load_collection(coll) == [TaskRef("s1_p1", "a")]  # the original untouched with --out


def test_command_without_a_display_is_one_line(tmp_path):
    root = make_root(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run(
        [str(REPO / ".venv/bin/metaemg-tasks"), "gui", "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot open a window: ")
    assert "Traceback" not in proc.stderr


def test_command_with_a_bad_root(tmp_path, capsys):
    from metalearn.cli import tasks_main

    assert tasks_main(["gui", "--root", str(tmp_path / "nope")]) == 2
    assert "data root is not a directory" in capsys.readouterr().err
