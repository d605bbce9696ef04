"""`make lint`'s function-length check (scripts/long_functions.py): it finds a long function and
passes the product packages as they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _check():
    spec = importlib.util.spec_from_file_location("long_functions", REPO / "scripts" / "long_functions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_function_over_the_limit_is_named_and_the_packages_pass(tmp_path):
    check = _check()
    pkg = tmp_path / "controller"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(check.LIMIT))
    (pkg / "long.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n    return x0\n")
    assert check.long_functions(tmp_path) == [f"controller/long.py:5: long is {check.LIMIT + 2} lines (limit 80)"]
    assert check.long_functions(REPO) == []
