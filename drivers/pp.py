"""Proximity pilot (IEC 61851-1 / IEC 62196-2 cable coding): PP-PE resistance in ohms.

The PP line is pulled up to `pullup_mv` through `pullup_ohms`; the cable's coding resistor Rc
pulls it to PE, so the node sits at V = Vpu * Rc / (Rc + Rpu) and Rc = Rpu * V / (Vpu - V).
A reading at or above `open_mv` is an open PP (no cable) or an ADC in saturation: both mean
"no cable coding", reported as PP_OPEN_OHMS.
"""
from drivers.analog import mean_mv
from firmware.board import PP_OPEN_OHMS
from firmware.compat import const

_SAMPLES = const(4)


class ProximityPilot:
    def __init__(self, adc, pullup_ohms, pullup_mv, open_mv):
        self._read = adc.read_uv
        self._rpu = pullup_ohms
        self._vpu = pullup_mv
        self._open = open_mv
        self.last_mv = 0

    def read_ohms(self):
        """[tick] Mean of a few conversions, converted with integer math."""
        mv = mean_mv(self._read, _SAMPLES)
        self.last_mv = mv
        if mv >= self._open:
            return PP_OPEN_OHMS
        # Rpu <= 100k and mv <= 3300: the product stays below 2**30 (no long int).
        ohms = self._rpu * mv // (self._vpu - mv)
        return PP_OPEN_OHMS if ohms > PP_OPEN_OHMS else ohms


class FixedProximity:
    """A tethered cable without a PP sense circuit: its coding resistor, always."""

    def __init__(self, ohms):
        self._ohms = ohms
        self.last_mv = 0

    def read_ohms(self):
        return self._ohms
