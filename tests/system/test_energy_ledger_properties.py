"""Every watt-hour billed to exactly one session, or counted as unbilled: the energy ledger
under random meter behaviour (resets, swaps, jumps, silences, garbage), random session
sequences and power cuts, drawn by hypothesis (CPython only: hypothesis does not run on
MicroPython; tests/unit/test_energy_ledger.py plays seeded cases on both runtimes).

The rig and the invariants are in tests/unit/ledger_rig.py: the real SessionManager,
MeterService and Counters with station.py's glue, checked against the meter's true energy.
LEDGER_EXAMPLES=n draws more (`make bench-ledger`).
"""
import os
import sys
import unittest

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "unit"))

from ledger_rig import OPS, Rig  # noqa: E402

EXAMPLES = int(os.environ.get("LEDGER_EXAMPLES", "150"))
SCENARIOS = st.lists(st.tuples(st.sampled_from(OPS), st.integers(min_value=0, max_value=99)),
                     min_size=1, max_size=16)


class EnergyLedger(unittest.TestCase):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
              suppress_health_check=[HealthCheck.too_slow])
    @given(SCENARIOS)
    def test_records_plus_unbilled_are_the_meter_difference(self, ops):
        rig = Rig()
        rig.play(ops)
        rig.check(self)
