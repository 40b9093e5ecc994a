"""Residual-current monitor (RDC-DD, IEC 62955: 6 mA DC) fault line and test input.

The self-test (the charger pulses the test input and expects the fault line within
rcd_selftest_timeout_ms) is the core's job; this driver only maps levels.
"""


class ResidualCurrentMonitor:
    def __init__(self, fault, fault_high=True, test=None, test_active_high=True):
        self._fault = fault
        self._fault_level = 1 if fault_high else 0
        self._test = test
        self._test_on = 1 if test_active_high else 0
        self._test_off = 0 if test_active_high else 1
        if test is not None:
            test.value(self._test_off)

    def tripped(self):
        """[tick]"""
        return self._fault.value() == self._fault_level

    def set_test(self, on):
        """[tick] Boards without a test input do nothing (the self-test then fails)."""
        if self._test is not None:
            self._test.value(self._test_on if on else self._test_off)
