"""`make lint`: no function in the packages (the benchmarks included) longer than 80 lines (issue 29: a function does
one thing; split it into named steps). Prints each one over the limit and exits 1, else nothing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 80
PACKAGES = ("metaemg", "firmware_protocol", "controller", "metalearn", "calibration", "console", "rig", "bench")


def long_functions(root: Path, limit: int = LIMIT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > limit:
                        out.append(
                            f"{path.relative_to(root)}:{node.lineno}: {node.name} is {lines} lines (limit {limit})"
                        )
    return out


if __name__ == "__main__":
    found = long_functions(Path(__file__).resolve().parents[1])
    if found:
        print("\n".join(found))
    sys.exit(1 if found else 0)
