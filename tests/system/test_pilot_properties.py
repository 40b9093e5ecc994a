"""Property tests of the duty coding (CPython only: hypothesis does not run on MicroPython)."""
from hypothesis import given, strategies as st

from firmware.pilot import (
    CURRENT_DIGITAL, DIODE_FAULT, PILOT_FAULT, PILOT_HOLD, DutyError, classify,
    current_for_duty, duty_for_current, pp_rating_ma)

currents = st.integers(min_value=6000, max_value=80000)
charging_duties = st.integers(min_value=100, max_value=960)


@given(currents)
def test_the_ev_never_reads_more_than_offered(ma):
    assert current_for_duty(duty_for_current(ma)) <= ma


@given(currents)
def test_rounding_loses_at_most_one_step(ma):
    read = current_for_duty(duty_for_current(ma))
    if ma <= 51000:
        assert ma - read < 60
    elif ma < 52750:
        assert read == 51000          # the gap between the two formulas of the standard
    else:
        assert ma - read < 250


@given(charging_duties)
def test_every_charging_duty_round_trips(d):
    assert duty_for_current(current_for_duty(d)) == d


@given(currents, currents)
def test_duty_is_monotonic_in_current(a, b):
    if a <= b:
        assert duty_for_current(a) <= duty_for_current(b)


@given(st.integers(min_value=-5000, max_value=5000))
def test_current_for_duty_is_total_over_its_domain(d):
    try:
        ma = current_for_duty(d)
    except DutyError:
        assert d < 0 or d > 1000 or 0 < d < 30 or 70 < d < 80 or 960 < d < 1000
    else:
        assert ma in (0, CURRENT_DIGITAL) or 6000 <= ma <= 80000


@given(st.integers(min_value=-20000, max_value=20000), st.integers(min_value=-20000, max_value=20000),
       st.booleans())
def test_classify_never_fails_and_returns_a_level(high, low, pwm):
    level = classify(high, low, pwm)
    assert 0 <= level <= PILOT_HOLD
    if level == DIODE_FAULT:
        assert pwm
    if high > 13000:
        assert level == PILOT_FAULT


@given(st.integers(min_value=0, max_value=200000))
def test_pp_rating_is_a_known_value(ohms):
    assert pp_rating_ma(ohms) in (-1, 0, 13000, 20000, 32000, 63000)
