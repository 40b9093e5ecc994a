"""NTC thermistor on an ADC input, in tenths of a degree Celsius.

The Beta model (1/T = 1/T25 + ln(R/R25)/B) needs logarithms, so it is evaluated once, at
construction, into a table of ADC millivolts every 5 C from -40 to +150 C; a reading is
then placed in the table and interpolated with integers, which allocates nothing.

An open or shorted sensor reads outside the table, or at/above `open_mv` where the ADC
saturates (~3.1 V at 11 dB), and is reported as SENSOR_FAULT_DC (200.0 C): above every
derating and stop threshold, so a broken sensor stops charging instead of letting it run
unsupervised. The price: a divider whose cold end reaches `open_mv` cannot read that cold
(the reference divider reads down to about -25 C; see docs/board.md).
"""
import array
import math

from drivers.analog import mean_mv
from firmware.compat import const

SENSOR_FAULT_DC = const(2000)
_T_MIN_C = const(-40)
_T_MAX_C = const(150)
_STEP_C = const(5)
_SAMPLES = const(4)


def ntc_ohms(t_c, r25, beta):
    """Beta-model resistance at t_c degrees Celsius (float; used at start-up only)."""
    return r25 * math.exp(beta * (1.0 / (t_c + 273.15) - 1.0 / 298.15))


class NtcThermistor:
    def __init__(self, adc, fixed_ohms, ref_mv, r25_ohms, beta, ntc_low_side=True,
                 open_mv=3050):
        self._read = adc.read_uv
        self._open_mv = open_mv
        n = (_T_MAX_C - _T_MIN_C) // _STEP_C + 1
        self._mv = array.array("i", [0] * n)
        for i in range(n):
            r = ntc_ohms(_T_MIN_C + i * _STEP_C, r25_ohms, beta)
            if ntc_low_side:
                mv = ref_mv * r / (r + fixed_ohms)
            else:
                mv = ref_mv * fixed_ohms / (r + fixed_ohms)
            self._mv[i] = int(mv + 0.5)
        # Low side: the voltage falls as it warms; high side: it rises.
        self._falling = ntc_low_side
        self._n = n
        self.last_mv = 0

    def read_dc(self):
        """[tick] Temperature in tenths of a degree C."""
        mv = mean_mv(self._read, _SAMPLES)
        self.last_mv = mv
        return self.mv_to_dc(mv)

    def mv_to_dc(self, mv):
        table = self._mv
        n = self._n
        if mv >= self._open_mv:
            return SENSOR_FAULT_DC
        if self._falling:
            if mv > table[0] or mv < table[n - 1]:
                return SENSOR_FAULT_DC
            i = 1
            while table[i] > mv:
                i += 1
            hi_mv = table[i - 1]
            lo_mv = table[i]
            # hi_mv >= mv >= lo_mv; temperature rises from index i-1 to i.
            frac_num = hi_mv - mv
        else:
            if mv < table[0] or mv > table[n - 1]:
                return SENSOR_FAULT_DC
            i = 1
            while table[i] < mv:
                i += 1
            hi_mv = table[i]
            lo_mv = table[i - 1]
            frac_num = mv - lo_mv
        span = hi_mv - lo_mv
        base_dc = (_T_MIN_C + (i - 1) * _STEP_C) * 10
        if span == 0:
            return base_dc
        return base_dc + frac_num * _STEP_C * 10 // span
