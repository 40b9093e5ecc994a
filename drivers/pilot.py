"""Control pilot (IEC 61851-1 Annex A): the 1 kHz +/-12 V output and its measurement.

Output: duty in tenths of a percent on machine.PWM; 1000 is steady +12 V (x1 states), 0 is
steady -12 V (state F). A front end whose output stage inverts gets the complement.

Measurement: MicroPython on the ESP32 has no hard interrupts, so sampling in step with the
PWM edges (50 us after the rising edge) cannot be done from Python. Instead a burst of ADC
conversions spans at least two PWM periods and the second-highest / second-lowest readings
give the high and the low level (the single extreme is dropped as a possible spike). While
the output is steady a short burst is averaged and both levels hold that value.

Limits (docs/board.md): each phase needs two conversions inside its plateau. At ~25 us per
conversion that holds down to 10 % duty (100 us high) and up to 96 % (40 us low over two
periods); the 5 % digital-communication duty is not measured reliably. The ADC is non-linear
below `adc_min_mv`, which is where -12 V lands: readings there only say "below -6 V" and are
reported as the nominal -12000 mV.
"""
from firmware.compat import const

PWM_FREQ_HZ = const(1000)       # IEC 61851-1: 1 kHz +/- 2 %
NEG_NOMINAL_MV = const(-12000)
POS_NOMINAL_MV = const(12000)
_NEG_DETECT_MV = const(-6000)
_STEADY_SAMPLES = const(8)


class PilotOutput:
    """Drives the CP through `pwm` (a machine.PWM already on the pin)."""

    def __init__(self, pwm, inverted=False):
        self._pwm = pwm
        self._inverted = inverted
        self.duty_permille = -1
        pwm.freq(PWM_FREQ_HZ)
        self.set(1000)

    def set(self, duty_permille):
        """[tick] 0..1000; unchanged duties are not rewritten (no PWM restart)."""
        if duty_permille == self.duty_permille:
            return
        if duty_permille < 0 or duty_permille > 1000:
            raise ValueError("pilot duty out of range 0..1000")
        d = duty_permille * 65535 // 1000
        if self._inverted:
            d = 65535 - d
        self._pwm.duty_u16(d)
        self.duty_permille = duty_permille


class PilotSampler:
    """Measures the CP level through `adc` (machine.ADC at 11 dB) and a linear front end
    calibrated at two points: `adc_mv_at_0v` and `adc_mv_at_12v`. Results in `high_mv` and
    `low_mv` (connector millivolts). `clock` supplies ticks_us/ticks_diff."""

    def __init__(self, adc, adc_mv_at_0v, adc_mv_at_12v, adc_min_mv, burst_us, max_samples,
                 clock):
        self._read = adc.read_uv        # bound once: a per-call lookup would allocate
        self._zero = adc_mv_at_0v
        self._span = adc_mv_at_12v - adc_mv_at_0v
        self._min_uv = adc_min_mv * 1000
        self._burst_us = burst_us
        self._max = max_samples
        self._ticks_us = clock.ticks_us
        self._ticks_diff = clock.ticks_diff
        # What a reading below the usable floor means at the connector.
        at_min = self.to_connector_mv(adc_min_mv)
        self._below_min_mv = NEG_NOMINAL_MV if at_min <= _NEG_DETECT_MV else at_min
        self.high_mv = 0
        self.low_mv = 0
        self.samples = 0

    def to_connector_mv(self, adc_mv):
        # (adc - zero) <= 3300 and 12000 * 3300 < 2**30: stays a small int on the ESP32.
        return (adc_mv - self._zero) * POS_NOMINAL_MV // self._span

    def _level(self, uv):
        if uv < self._min_uv:
            return self._below_min_mv
        return self.to_connector_mv(uv // 1000)

    def sample(self, steady):
        """[tick] One burst. `steady`: the output is not switching, so average a few
        conversions into both levels instead of looking for two plateaus."""
        read = self._read
        if steady:
            total = 0
            hi = 0
            lo = 0x7FFFFFF
            for _ in range(_STEADY_SAMPLES):
                v = read()
                total += v
                if v > hi:
                    hi = v
                if v < lo:
                    lo = v
            # Mean without the two extremes.
            level = self._level((total - hi - lo) // (_STEADY_SAMPLES - 2))
            self.high_mv = level
            self.low_mv = level
            self.samples = _STEADY_SAMPLES
            return
        ticks_us = self._ticks_us
        ticks_diff = self._ticks_diff
        hi1 = hi2 = -1
        lo1 = lo2 = 0x7FFFFFF
        n = 0
        t0 = ticks_us()
        limit = self._max
        window = self._burst_us
        while True:
            v = read()
            if v > hi2:
                if v > hi1:
                    hi2 = hi1
                    hi1 = v
                else:
                    hi2 = v
            if v < lo2:
                if v < lo1:
                    lo2 = lo1
                    lo1 = v
                else:
                    lo2 = v
            n += 1
            if n >= limit or ticks_diff(ticks_us(), t0) >= window:
                break
        if n < 2:
            hi2 = hi1
            lo2 = lo1
        if self._span > 0:
            self.high_mv = self._level(hi2)
            self.low_mv = self._level(lo2)
        else:
            # A sense stage that inverts puts the CP's high level at the ADC's low end.
            self.high_mv = self._level(lo2)
            self.low_mv = self._level(hi2)
        self.samples = n
