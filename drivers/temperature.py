"""NTC thermistor on an ADC input, in tenths of a degree Celsius.

The Beta model (1/T = 1/T25 + ln(R/R25)/B) needs logarithms, so it is evaluated once, at
construction, into a table of ADC millivolts every 5 C from -40 to +150 C; a reading is
then placed in the table and interpolated with integers, which allocates nothing.

An open or shorted sensor reads outside the table and is reported as SENSOR_FAULT_DC
(200.0 C): above every derating and stop threshold, so a broken sensor stops charging
instead of letting it run unsupervised.
"""
import array
import math

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
    def __init__(self, adc, fixed_ohms, ref_mv, r25_ohms, beta, ntc_low_side=True):
        self._read = adc.read_uv
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
        read = self._read
        total = 0
        for _ in range(_SAMPLES):
            total += read()
        mv = total // (_SAMPLES * 1000)
        self.last_mv = mv
        return self.mv_to_dc(mv)

    def mv_to_dc(self, mv):
        table = self._mv
        n = self._n
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
