"""Control pilot and proximity pilot arithmetic (IEC 61851-1 Annex A, Type 2 cable coding).

Pure functions on integers: millivolts, milliamps, ohms and duty in tenths of a percent
(permille, 1000 = steady +12 V). Nothing here allocates, so the safety tick may call all of it.

Pilot levels are classified with the bands of IEC 61851-1 Table A.4 as used by chargebyte's
CPUtils: A 11..13 V, B 8..10 V, C 5..7 V, D 2..4 V, E -1..2 V, F -13..-11 V. The gaps between
the bands (10..11, 7..8, 4..5 V) are hysteresis: a reading there says nothing new
(PILOT_HOLD) and the previous level stands.
"""
from firmware.compat import const

# Raw pilot levels as read at the connector. The x1/x2 suffix is not here: it is the EVSE's
# own choice of output, not something the EV signals.
PILOT_A = const(0)            # +12 V: no EV
PILOT_B = const(1)            # +9 V: EV connected, not requesting
PILOT_C = const(2)            # +6 V: EV requests charging
PILOT_D = const(3)            # +3 V: EV requests charging with ventilation
PILOT_E = const(4)            # 0 V: CP shorted to PE, or the EVSE is unpowered
PILOT_F = const(5)            # -12 V: the EVSE itself signals "not available"
PILOT_FAULT = const(6)        # a voltage no valid EV circuit can produce
DIODE_FAULT = const(7)        # PWM running but the EV's diode is missing or shorted
PILOT_HOLD = const(8)         # in a gap between bands, or nothing confirmed yet

LEVEL_NAMES = ("A", "B", "C", "D", "E", "F", "PILOT_FAULT", "DIODE_FAULT", "HOLD")

# Band edges in millivolts (Table A.4 via chargebyte CPUtils).
_A_MIN = const(11000)
_A_MAX = const(13000)
_B_MIN = const(8000)
_B_MAX = const(10000)
_C_MIN = const(5000)
_C_MAX = const(7000)
_D_MIN = const(2000)
_D_MAX = const(4000)
_E_MIN = const(-1000)
_F_MIN = const(-13000)
_F_MAX = const(-11000)
# A negative half between these means the EV side is neither a diode to -12 V nor a short.
_NEG_FAULT_MIN = const(-10000)
_NEG_FAULT_MAX = const(-2000)
# Without the EV's diode the negative half mirrors the positive one (chargebyte: 1.2 V).
_DIODE_SYMMETRY_MV = const(1200)


def classify(high_mv, low_mv, pwm_on):
    """Classify one CP sample.

    `high_mv`/`low_mv`: the positive and negative plateau at the connector. With the output
    steady (no PWM) both hold the same value. `pwm_on`: True while the EVSE drives the 1 kHz
    PWM, the only time the diode can be checked (with a steady +12 V the low level equals the
    high level, which would look like a missing diode).
    Returns one of PILOT_A..PILOT_F, PILOT_FAULT, DIODE_FAULT or PILOT_HOLD.
    """
    if high_mv > _A_MAX:
        return PILOT_FAULT
    # CP short to PE: the positive half collapses while the negative half is not a clean
    # -12 V (chargebyte: high < 2 V with low > -10 V).
    if _E_MIN <= high_mv < _D_MIN and low_mv > _NEG_FAULT_MIN:
        return PILOT_E
    # Only the B..D bands are checked: no EV (state A, up to the 10..11 V gap) has no diode
    # either, and +12 / -12 V is a plain A.
    if pwm_on and _D_MIN < high_mv <= _B_MAX:
        d = high_mv + low_mv
        if -_DIODE_SYMMETRY_MV <= d <= _DIODE_SYMMETRY_MV:
            return DIODE_FAULT
    if _NEG_FAULT_MIN <= low_mv <= _NEG_FAULT_MAX:
        return PILOT_FAULT
    if high_mv >= _A_MIN:
        return PILOT_A
    if high_mv > _B_MAX:
        return PILOT_HOLD
    if high_mv >= _B_MIN:
        return PILOT_B
    if high_mv > _C_MAX:
        return PILOT_HOLD
    if high_mv >= _C_MIN:
        return PILOT_C
    if high_mv > _D_MAX:
        return PILOT_HOLD
    if high_mv >= _D_MIN:
        return PILOT_D
    if _F_MIN <= high_mv <= _F_MAX:
        return PILOT_F
    if high_mv < _F_MIN:
        return PILOT_FAULT
    if _NEG_FAULT_MIN <= high_mv <= _NEG_FAULT_MAX:
        return PILOT_FAULT
    if high_mv >= _E_MIN:
        # 0 V with a clean -12 V negative half: the positive half alone is shorted, which
        # no EV circuit produces.
        return PILOT_FAULT
    # -11..-10 V and -2..-1 V: the gaps beside F and E.
    return PILOT_HOLD


class PilotFilter:
    """Accepts a new pilot level after `confirm_n` equal consecutive readings (chargebyte
    uses two). A PILOT_HOLD reading neither confirms nor contradicts; it only breaks a run.

    Preallocated state only: `update()` allocates nothing and may run in the safety tick.
    """

    def __init__(self, confirm_n=2):
        if not 1 <= confirm_n <= 10:
            raise ValueError("confirm_n: 1..10")
        self.confirm_n = confirm_n
        self.level = PILOT_HOLD
        self._candidate = PILOT_HOLD
        self._count = 0

    def reset(self):
        """Forget the confirmed level (after the EVSE drove F and saw nothing of the EV)."""
        self.level = PILOT_HOLD
        self._candidate = PILOT_HOLD
        self._count = 0

    def pending(self):
        """True while a reading differs from the confirmed level and awaits confirmation."""
        return self._count > 0

    def update(self, raw):
        """Feed one raw reading; return the confirmed level (PILOT_HOLD until the first one)."""
        if raw == PILOT_HOLD:
            self._count = 0
            return self.level
        if raw == self.level:
            self._count = 0
            return self.level
        if raw == self._candidate:
            self._count += 1
        else:
            self._candidate = raw
            self._count = 1
        if self._count >= self.confirm_n:
            self.level = raw
            self._count = 0
        return self.level


# -- PWM duty <-> current (IEC 61851-1 Table A.7 / A.8) ------------------------------------

DUTY_PAUSED = const(1000)       # steady +12 V: x1, no current offered
DUTY_F = const(0)               # steady -12 V: state F
CURRENT_MIN_MA = const(6000)
CURRENT_MAX_MA = const(80000)
# current_for_duty() returns this for 3..7 %: digital communication (ISO 15118 / DIN 70121)
# is required and the duty carries no current.
CURRENT_DIGITAL = const(-1)

_LOW_RANGE_MAX_MA = const(51000)   # up to 51 A: duty = I / 0.6
_DUTY_LOW_MAX = const(850)         # 85.0 %: the last duty of the I / 0.6 range


class DutyError(ValueError):
    pass


def duty_for_current(ma):
    """Duty in permille that offers `ma` milliamps (6000..80000).

    Rounds down, so the current the EV reads back never exceeds `ma`: one permille is 60 mA
    below 51 A and 250 mA above. Between 51 A and 52.75 A the two formulas of the standard
    leave a gap (85.0 % means 51 A, the next duty 85.1 % already 52.75 A), so 85.0 % is used.
    Below 6 A there is no valid duty: callers pause (DUTY_PAUSED) instead.
    """
    if ma < CURRENT_MIN_MA:
        raise DutyError("current below 6 A has no duty: pause instead")
    if ma > CURRENT_MAX_MA:
        raise DutyError("current above 80 A cannot be signalled")
    if ma <= _LOW_RANGE_MAX_MA:
        return ma // 60                     # d[%] = I / 0.6  ->  d[permille] = I[mA] / 60
    d = ma // 250 + 640                     # d[%] = I / 2.5 + 64
    if d <= _DUTY_LOW_MAX:
        return _DUTY_LOW_MAX
    return d


def current_for_duty(permille):
    """The current in mA an EV reads from a duty in permille.

    Returns 0 for the steady levels (1000 = x1 / paused, 0 = state F), CURRENT_DIGITAL for
    3..7 % and 6000..80000 for a charging duty. Raises DutyError for the duties the standard
    calls an error (PWM under 3 %, 7..8 %, over 96 % but under 100 %) and for values
    outside 0..1000.
    """
    if permille == DUTY_PAUSED or permille == DUTY_F:
        return 0
    if permille < 0 or permille > 1000:
        raise DutyError("duty outside 0..1000 permille")
    if permille < 30:
        raise DutyError("duty under 3 %: no charging allowed")
    if permille <= 70:
        return CURRENT_DIGITAL
    if permille < 80:
        raise DutyError("duty 7..8 %: error, no charging allowed")
    if permille <= 100:
        return CURRENT_MIN_MA
    if permille <= _DUTY_LOW_MAX:
        return permille * 60
    if permille <= 960:
        return (permille - 640) * 250
    raise DutyError("duty over 96 %: error, no charging allowed")


# -- proximity pilot (IEC 61851-1 Table B.2, Type 2 cable coding) -------------------------

PP_ERROR = const(-1)      # under 75 ohm: short or a resistor no cable uses
PP_NO_CABLE = const(0)    # open circuit: no cable in the socket


def pp_rating_ma(ohms):
    """Cable current rating in mA from the PP-PE resistance, PP_NO_CABLE or PP_ERROR."""
    if ohms < 75:
        return PP_ERROR
    if ohms < 150:
        return 63000        # 100 ohm
    if ohms < 330:
        return 32000        # 220 ohm
    if ohms < 1000:
        return 20000        # 680 ohm
    if ohms <= 2200:
        return 13000        # 1.5 kohm
    return PP_NO_CABLE
