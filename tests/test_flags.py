"""The same flag for the same thing in every tool (issue 29): every console script's --help, as a
user runs it (real subprocesses, in parallel), read for the shared flags' names and meanings."""

from __future__ import annotations

import re
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rig.processes import BIN

REPO = Path(__file__).resolve().parents[1]
# flag -> words its help must carry wherever a tool offers it (its meaning)
SHARED = {
    "--monitor": ("monitor",),
    "--control": ("control",),
    "--lsl-stream": ("stream",),
    "--config": ("configuration",),
    "--print-config": ("configuration",),
    "--json": ("json",),
    "--quiet": (),
}
OLD = ("--endpoint", "--name", "--source-id", "--check-config")  # renamed: hidden, still accepted a release
# the tools that print a result (each has --json) and those that print progress (each has --quiet)
RESULTS = (
    "metaemg-eval",
    "metaemg-calibrate",
    "metaemg-export",
    "metaemg-synth",
    "metaemg-import myoarmband",
    "metaemg-monitor",
    "metaemg-tasks validate",
    "metaemg-tasks build",
    "myhand-controller",
)
PROGRESS = ("metaemg-synth", "metaemg-import myoarmband", "metaemg-demo")


def helps() -> dict[str, str]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {name: [str(BIN / name), "--help"] for name in scripts if name != "metaemg-train"}  # Hydra's own
    commands["myhand-controller ctl"] = [str(BIN / "myhand-controller"), "ctl", "--help"]
    commands |= {f"metaemg-tasks {sub}": [str(BIN / "metaemg-tasks"), sub, "--help"] for sub in ("validate", "build")}
    commands["metaemg-import myoarmband"] = [str(BIN / "metaemg-import"), "myoarmband", "--help"]

    def run(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (argv, proc.stderr)
        return proc.stdout

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(commands, pool.map(run, commands.values()), strict=True))


def options(text: str) -> dict[str, str]:
    """``--flag`` -> its help text (argparse's layout: the flag at the start of an indented line)."""
    out: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        m = re.match(r"\s{2}(?:-\w, )?(--[\w-]+)", line)
        if m:
            flag = m.group(1)
            out[flag] = line
        elif flag and line.startswith(" " * 10):
            out[flag] += " " + line.strip()
        else:
            flag = None
    return out


def test_every_tool_names_the_same_thing_the_same_way():
    seen: dict[str, list[str]] = {}
    wrong = []
    texts = helps()
    wrong += [f"{tool}: no --json" for tool in RESULTS if "--json" not in options(texts[tool])]
    wrong += [f"{tool}: no --quiet" for tool in PROGRESS if "--quiet" not in options(texts[tool])]
    for tool, text in texts.items():
        opts = options(text)
        for old in OLD:
            if old in opts:
                wrong.append(f"{tool}: {old} (renamed)")
        for flag, words in SHARED.items():
            if flag in opts:
                seen.setdefault(flag, []).append(tool)
                help_text = opts[flag].lower()
                wrong += [f"{tool}: {flag} says nothing of {w!r}" for w in words if w not in help_text]
    assert wrong == [], wrong
    # the flags are shared, not one tool's: the monitor's and the daemon's endpoints, the stream
    assert len(seen["--monitor"]) >= 4 and len(seen["--control"]) >= 3 and len(seen["--lsl-stream"]) >= 4, seen
