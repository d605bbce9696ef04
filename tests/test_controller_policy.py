"""controller.policy: hand-made sequences for each rule, and properties over random ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.config import PolicyConfig
from controller.policy import CLOSE, OPEN, RELAX, Policy

DT = 0.05  # a window every 50 ms
P = {RELAX: (0.9, 0.05, 0.05), OPEN: (0.05, 0.9, 0.05), CLOSE: (0.05, 0.05, 0.9)}
UNSURE = (0.4, 0.35, 0.25)


def good(policy: Policy, t0: float, t1: float) -> float:
    """Good input every 10 ms from t0 to t1 (inclusive); returns t1."""
    for k in range(int(round((t1 - t0) / 0.01)) + 1):
        policy.input_good(t0 + k * 0.01)
        policy.tick(t0 + k * 0.01)
    return t1


def armed(config: PolicyConfig | None = None, t0: float = 0.0) -> tuple[Policy, float]:
    """A policy that has seen good input for rearm_ms and held relax for min_dwell_ms; returns
    it and the current time."""
    policy = Policy(config or PolicyConfig())
    t = t0
    while not policy.armed:
        policy.input_good(t)
        policy.tick(t)
        t += 0.01
    t = good(policy, t, t + policy.config.min_dwell_ms / 1000 + 0.01)
    return policy, t


def feed(policy: Policy, t: float, seq: list, dt: float = DT) -> tuple[list, float]:
    out = []
    for probs in seq:
        policy.input_good(t)
        out.append(policy.update(t, P.get(probs, probs)))
        t += dt
    return out, t


def test_starts_safe_and_arms_after_rearm_ms_of_good_input():
    policy = Policy(PolicyConfig(rearm_ms=300))
    d = policy.update(0.0, P[OPEN])
    assert d.safe and d.reason == "starting" and not policy.armed
    good(policy, 0.0, 0.29)
    assert not policy.armed
    policy.input_good(0.30)
    assert policy.armed and policy.intent == RELAX


def test_majority_vote_needs_more_than_half():
    policy, t = armed(PolicyConfig(vote=5, min_dwell_ms=0))
    decisions, t = feed(policy, t, [OPEN, OPEN])
    assert [d.intent for d in decisions] == [RELAX, RELAX]  # 2 of 5: no majority
    decisions, t = feed(policy, t, [OPEN])
    assert decisions[0].vote == OPEN and decisions[0].intent == OPEN and decisions[0].changed


def test_rejection_votes_relax():
    policy, t = armed(PolicyConfig(vote=3, min_dwell_ms=0, threshold=0.5))
    decisions, t = feed(policy, t, [UNSURE, OPEN, OPEN])
    assert decisions[0].rejected and decisions[0].label == RELAX
    assert decisions[-1].intent == OPEN
    decisions, t = feed(policy, t, [(0.2, 0.45, 0.35)] * 3)  # open but below the threshold
    assert all(d.rejected for d in decisions) and decisions[-1].intent == RELAX


def test_minimum_dwell_holds_a_change():
    policy, t = armed(PolicyConfig(vote=1, min_dwell_ms=150, refractory_ms=0))
    decisions, t = feed(policy, t, [OPEN])
    t_open = decisions[0].t
    assert decisions[0].intent == OPEN
    decisions, t = feed(policy, t, [RELAX, RELAX, RELAX, RELAX])
    held = [d for d in decisions if d.held == "dwell"]
    assert held and all(d.intent == OPEN for d in held)
    first_relax = next(d for d in decisions if d.intent == RELAX)
    assert first_relax.t - t_open >= 0.15


def test_open_to_close_passes_through_relax_for_the_refractory_time():
    policy, t = armed(PolicyConfig(vote=1, min_dwell_ms=0, refractory_ms=300))
    decisions, t = feed(policy, t, [OPEN, OPEN, CLOSE])
    assert decisions[1].intent == OPEN
    assert decisions[2].intent == RELAX and decisions[2].held == "refractory"
    t_end = decisions[2].t
    decisions, t = feed(policy, t, [CLOSE] * 8)
    first_close = next(d for d in decisions if d.intent == CLOSE)
    assert first_close.t - t_end >= 0.3
    assert all(d.intent == RELAX and d.held == "refractory" for d in decisions if d.t < first_close.t)


def test_nan_probabilities_and_bad_input_are_safe_at_once():
    policy, t = armed(PolicyConfig(vote=1, min_dwell_ms=0))
    decisions, t = feed(policy, t, [OPEN])
    assert decisions[0].intent == OPEN
    d = policy.update(t, (math.nan, 0.5, 0.5))
    assert d.safe and d.reason == "nonfinite_output" and not policy.armed
    policy, t = armed(PolicyConfig(vote=1, min_dwell_ms=0))
    assert policy.input_bad(t, "saturated") is True
    assert policy.update(t, P[OPEN]).safe


def test_stale_after_stale_ms_and_rearm_after_rearm_ms():
    policy, t = armed(PolicyConfig(stale_ms=100, rearm_ms=300))
    last = t
    policy.input_good(last)
    assert policy.stale_deadline() == pytest.approx(last + 0.1)
    assert not policy.tick(last + 0.099) and policy.armed
    assert policy.tick(last + 0.100) and not policy.armed and policy.reason == "stale"
    assert policy.stale_deadline() is None
    # data again: re-armed only after 300 ms of it, starting at relax
    t = last + 1.0
    assert not policy.tick(t)
    for k in range(30):
        policy.input_good(t + k * 0.01)
        assert policy.update(t + k * 0.01, P[OPEN]).safe
        assert policy.reason == "rearming"
    policy.input_good(t + 0.3)
    assert policy.armed and policy.intent == RELAX


def test_an_interruption_restarts_the_rearm_time():
    policy, t = armed(PolicyConfig(stale_ms=100, rearm_ms=300))
    policy.input_bad(t, "nonfinite")
    good(policy, t + 0.01, t + 0.2)
    policy.input_bad(t + 0.21, "nonfinite")
    good(policy, t + 0.22, t + 0.51)
    assert not policy.armed
    policy.input_good(t + 0.52)
    assert policy.armed


def test_restart_after_pause_starts_from_relax_with_an_empty_vote():
    policy, t = armed(PolicyConfig(vote=3, min_dwell_ms=0))
    decisions, t = feed(policy, t, [OPEN] * 3)
    assert policy.intent == OPEN
    policy.restart(t)
    assert policy.intent == RELAX
    decisions, t = feed(policy, t, [OPEN])
    assert decisions[0].vote is None  # the old votes are gone


# -- properties -----------------------------------------------------------------------------------

probs = st.one_of(
    st.sampled_from([P[RELAX], P[OPEN], P[CLOSE], UNSURE]),
    st.tuples(*[st.floats(0, 1)] * 3),
    st.just((math.nan, 0.3, 0.3)),
)
step = st.tuples(st.sampled_from(["window", "window", "window", "bad", "gap"]), probs, st.floats(0.001, 0.2))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=120), st.integers(1, 7), st.floats(0, 300), st.floats(0, 500))
@example([("window", P[RELAX], d) for d in (0.125, 0.0625, 0.0625, 0.09375, 0.1)], 1, 0.0, 0.0)  # 0.1 s: 0.1 - 2e-17
def test_properties_over_random_sequences(steps, vote, dwell_ms, refractory_ms):
    config = PolicyConfig(vote=vote, min_dwell_ms=dwell_ms, refractory_ms=refractory_ms)
    policy = Policy(config)
    t = 0.0
    last_motion_output = {OPEN: -math.inf, CLOSE: -math.inf}
    last_change = -math.inf
    prev = None
    good_since = last_data = None
    for kind, p, dt in steps:
        t += dt
        if kind == "bad":
            policy.input_bad(t, "saturated")
            good_since, last_data = None, t
            assert not policy.armed and policy.intent is None
            continue
        if kind == "gap":
            t += 0.15  # longer than stale_ms
            policy.tick(t)
            assert not policy.armed
            good_since = None
            continue
        if last_data is not None and t - last_data >= config.stale_ms / 1000:
            good_since = None  # a gap: the input was stale (the times' difference, as the policy takes it:
            # a step of exactly stale_ms can come out a rounding below it)
        last_data = t
        policy.input_good(t)
        good_since = t if good_since is None else good_since
        d = policy.update(t, p)
        if not all(math.isfinite(v) for v in p):
            assert d.safe  # NaN always -> safe
            good_since = None
            prev = None
            continue
        if d.safe:
            prev = None
            continue
        # armed only after rearm_ms of uninterrupted good input
        assert t - good_since >= config.rearm_ms / 1000 - 1e-9
        if d.intent in (OPEN, CLOSE):
            other = CLOSE if d.intent == OPEN else OPEN
            # never open <-> close without refractory_ms between them
            assert t - last_motion_output[other] >= config.refractory_ms / 1000 - 1e-9
            last_motion_output[d.intent] = t
        if prev is not None and d.intent != prev:
            assert t - last_change >= config.min_dwell_ms / 1000 - 1e-9
        if d.changed:
            last_change = t
        prev = d.intent
