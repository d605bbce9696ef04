"""Rebuild docs/img/metaemg-tasks-gui.png: the real ``metaemg-tasks gui`` window on real recordings.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python scripts/tasks_gui_screenshot.py \\
        --root data/myo --out docs/img/metaemg-tasks-gui.png

(``data/myo``: ``metaemg-import myoarmband ../shared/datasets/myoarmband data/myo``.) It opens the
window at ``--pos`` (0-based, in walk order), approves one recording by hand, then presses
"Approve all valid", and grabs the window with ImageMagick's ``import`` as an 8-bit PNG. Nothing is
saved to a collection.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from metalearn.gui import App, Walk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/myo"))
    ap.add_argument("--out", type=Path, default=Path("docs/img/metaemg-tasks-gui.png"))
    ap.add_argument("--pos", type=int, default=5)
    args = ap.parse_args()
    app = App(Walk(args.root))
    try:
        app.walk.pos = args.pos - 1
        app.do("approve")  # one by hand: it moves on to --pos
        app.do("approve_all")
        app.root.update()
        app.canvas.draw()
        app.root.update()
        frame = app.root.wm_frame()  # the window with its decorations, if a window manager adds any
        subprocess.run(["import", "-window", frame, f"PNG8:{args.out}"], check=True, timeout=60)
    finally:
        app.root.destroy()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
