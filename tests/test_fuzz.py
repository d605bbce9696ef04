"""Fuzzing the parsers of untrusted input (the generators are bench/fuzz.py's, with fewer inputs):
the frame decoder must never raise, the config, recording and task-collection loaders may raise
only the project's own typed errors, the daemon's control socket answers every request and the
daemon survives; nothing may take longer than a second."""

from __future__ import annotations

import re

import pytest

from bench.fuzz import fuzz_collection, fuzz_config, fuzz_control, fuzz_decoder, fuzz_recording

SEEDS = (0, 1)


def _check(result) -> None:
    assert result.crashes == [], "\n".join(result.crashes[:5])
    assert result.hangs == [], "\n".join(result.hangs[:5])


@pytest.mark.parametrize("seed", SEEDS)
def test_decoder_never_raises_on_5000_mutated_inputs(seed):
    result = fuzz_decoder(5000, seed)
    _check(result)
    assert result.inputs == 5000
    assert result.accepted > 1000 and result.typed_errors > 1000  # both paths were exercised


@pytest.mark.parametrize("seed", SEEDS)
def test_config_loader_raises_only_config_error(seed):
    result = fuzz_config(300, seed)
    _check(result)
    assert result.accepted > 10 and result.typed_errors > 50


def test_config_loader_refuses_a_file_that_is_not_utf8(tmp_path):
    """Found by the fuzzer: it was a UnicodeDecodeError (exit 1 with a traceback)."""
    from controller.config import load
    from metaemg.errors import ConfigError

    path = tmp_path / "latin1.yaml"
    path.write_bytes("# réglages\npolicy:\n  vote: 5\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape("latin1.yaml")):
        load(path)


@pytest.mark.parametrize("seed", SEEDS)
def test_recording_loader_raises_only_data_error(seed):
    result = fuzz_recording(300, seed)
    _check(result)
    assert result.accepted > 5 and result.typed_errors > 50


@pytest.mark.parametrize("seed", SEEDS)
def test_task_collection_loader_raises_only_data_error(seed):
    result = fuzz_collection(500, seed)
    _check(result)
    assert result.accepted > 5 and result.typed_errors > 50


def test_control_socket_answers_every_request_and_the_daemon_survives():
    """1000 fuzzed requests to a real daemon's control socket (bench.fuzz runs 1e4, or 1e5 with
    --control 1e5); found: a deeply nested request crashed the daemon (RecursionError, exit 1)."""
    result = fuzz_control(1000, seed=3)
    _check(result)
    assert result.inputs == 1000 and result.accepted > 20 and result.typed_errors > 500
