"""Electrical model of the control pilot (CP) and proximity pilot (PP) circuits.

IEC 61851-1 Annex A, Figure A.1: the EVSE drives +12 V / -12 V through R1 = 1 kOhm onto
the CP wire; the EV returns it to PE through a diode, R2 = 2.74 kOhm (always) and R3 in
parallel when it closes S2 (1.3 kOhm asks for charging, state C; 270 Ohm asks for charging
with ventilation, state D). The cable codes its rating with Rc between PP and PE.

Runs on CPython and on the MicroPython unix port. The ideal connector levels are worked out
once per change of the EV or of an injected fault (`PilotModel.update()`), so that the board's
safety-tick methods only add noise and quantise in the front end: integer arithmetic on
small ints, which allocates nothing.

Units: millivolts, ohms, milliamps, permille.
"""
from firmware.compat import const

# -- the circuit (IEC 61851-1 Table A.2 / Figure A.1) -----------------------------------
SUPPLY_MV = const(12000)       # EVSE oscillator: +/-12 V
R1_OHMS = const(1000)          # EVSE series resistor
R2_OHMS = const(2740)          # EV: always present behind the diode
R3_C_OHMS = const(1300)        # EV: S2 closed, charging requested (state C)
R3_D_OHMS = const(270)         # EV: S2 closed, ventilation required (state D)
DIODE_MV = const(700)          # EV diode forward drop

# S2 positions of the EV (what the EV signals; the x1/x2 suffix is the EVSE's business).
S2_OPEN = const(0)             # state B
S2_C = const(1)                # state C
S2_D = const(2)                # state D
S2_NAMES = ("B", "C", "D")

# Cable coding, PP to PE (IEC 61851-1 Table B.2): the resistor per cable rating.
CABLE_OHMS = {13: 1500, 20: 680, 32: 220, 63: 100}
PP_OPEN = const(100000)        # same as firmware.board.PP_OPEN_OHMS: no cable


def _divider(source_mv, drop_mv, load_ohms):
    # Source through R1 into (drop + load): the CP node sits at drop + share of the rest.
    return drop_mv + (source_mv - drop_mv) * load_ohms // (R1_OHMS + load_ohms)


def ev_load_ohms(s2):
    """R2 alone (B) or R2 || R3 (C, D), rounded to the ohm."""
    if s2 == S2_C:
        r3 = R3_C_OHMS
    elif s2 == S2_D:
        r3 = R3_D_OHMS
    else:
        return R2_OHMS
    return (R2_OHMS * r3 + (R2_OHMS + r3) // 2) // (R2_OHMS + r3)


class PilotModel:
    """The CP/PP circuit between the EVSE's output and the EV, with injectable faults.

    `high_mv` is the connector voltage while the EVSE drives +12 V, `low_mv` while it drives
    -12 V. Call `update()` after changing any attribute (the scenario player does).
    """

    def __init__(self):
        self.plugged = False        # cable in socket and vehicle inlet
        self.s2 = S2_OPEN
        self.cable_ohms = CABLE_OHMS[32]
        # injectable faults
        self.diode_short = False    # EV diode shorted (or missing): negative half mirrors
        self.cp_short_pe = False    # CP wire shorted to PE: state E, 0 V
        self.cp_open = False        # CP wire broken: the EVSE sees no load (+12 / -12 V)
        self.pe_loss = False        # PE broken: the EV's return and the cable's Rc float
        self.high_mv = SUPPLY_MV
        self.low_mv = -SUPPLY_MV
        self.pp_ohms = PP_OPEN
        self.update()

    def ev_state(self):
        """What the EV signals: "A" unplugged, else "B", "C" or "D" (S2)."""
        if not self.plugged:
            return "A"
        return S2_NAMES[self.s2]

    def update(self):
        if self.cp_short_pe:
            self.high_mv = 0
            self.low_mv = 0
        elif not self.plugged or self.cp_open or self.pe_loss:
            self.high_mv = SUPPLY_MV
            self.low_mv = -SUPPLY_MV
        else:
            load = ev_load_ohms(self.s2)
            if self.diode_short:
                # Without the diode both halves see the same divider.
                self.high_mv = _divider(SUPPLY_MV, 0, load)
                self.low_mv = -self.high_mv
            else:
                self.high_mv = _divider(SUPPLY_MV, DIODE_MV, load)
                # The diode blocks the negative half: no current, the full -12 V.
                self.low_mv = -SUPPLY_MV
        if self.plugged and not self.pe_loss:
            self.pp_ohms = self.cable_ohms
        else:
            self.pp_ohms = PP_OPEN


def levels(duty_permille, model):
    """(high_mv, low_mv) the connector shows for an EVSE output: with a steady output both
    plateaus hold the steady level (the board contract of firmware.board.sample_pilot)."""
    if duty_permille >= 1000:
        return model.high_mv, model.high_mv
    if duty_permille <= 0:
        return model.low_mv, model.low_mv
    return model.high_mv, model.low_mv


# -- the board's front end and ADC ------------------------------------------------------

_LCG_MUL = const(1103515245)
_LCG_ADD = const(12345)
_LCG_MASK = const(0x3FFFFFFF)
# The multiplier modulo 2**30 in 15-bit halves (see _lcg_next).
_MUL_HI = const((1103515245 & 0x3FFFFFFF) >> 15)
_MUL_LO = const(1103515245 & 0x7FFF)
_M15 = const(0x7FFF)


def _lcg_next(x):
    """(x * _LCG_MUL + _LCG_ADD) mod 2**30, computed in 15-bit halves so that every
    intermediate stays a small int on a 32-bit port (31-bit small ints): a product of two
    30-bit numbers would be a long int, allocated on every ADC reading."""
    xh = x >> 15
    xl = x & _M15
    lo = xl * _MUL_LO + _LCG_ADD
    mid = ((lo >> 15) + ((xh * _MUL_LO) & _M15) + ((xl * _MUL_HI) & _M15)) & _M15
    return (mid << 15) | (lo & _M15)


class FrontEnd:
    """The board's analogue front end and an ESP32-like ADC, in integers.

    CP: an op-amp stage maps the +/-12 V pilot to the ADC pin as
        pin_mv = offset_mv + cp_mv * gain_num // gain_den
    (default 1300 mV + cp / 11: +12 V -> 2391 mV, -12 V -> 209 mV, both inside the ESP32's
    linear 150..2450 mV range at 11 dB attenuation, so -12 V is read as -12 V rather than
    "below the floor"). The pin voltage gets uniform noise of +/-noise_mv from a seeded
    30-bit LCG (repeatable runs), is quantised to adc_bits over adc_full_mv, clamped to the
    linear range and converted back to connector millivolts - what a calibrated board
    driver would report, which for a reading at or under the floor is the nominal -12 V
    (when the floor lies below -6 V), as drivers/pilot.py does.

    PP: Rc to PE under a pull-up of pp_pullup_ohms to pp_supply_mv; read through the same ADC
    and converted back to ohms; a pin voltage at the top of the linear range reads as open.
    """

    def __init__(self, seed=1, noise_mv=3, offset_mv=1300, gain_num=1, gain_den=11,
                 adc_bits=12, adc_full_mv=3100, adc_min_mv=150, adc_max_mv=2450,
                 pp_pullup_ohms=1000, pp_supply_mv=3300):
        if noise_mv < 0 or noise_mv > 200:
            raise ValueError("noise_mv: 0..200")
        if gain_num <= 0 or gain_den <= 0:
            raise ValueError("gain: positive numerator and denominator")
        if not 8 <= adc_bits <= 16:
            raise ValueError("adc_bits: 8..16")
        self.noise_mv = noise_mv
        self.offset_mv = offset_mv
        self.gain_num = gain_num
        self.gain_den = gain_den
        self.adc_max_code = (1 << adc_bits) - 1
        self.adc_full_mv = adc_full_mv
        self.adc_min_mv = adc_min_mv
        self.adc_max_mv = adc_max_mv
        self.pp_pullup_ohms = pp_pullup_ohms
        self.pp_supply_mv = pp_supply_mv
        self._rng = (seed * 2654435761 + 1) & _LCG_MASK
        # Under the ADC's floor a reading only says "below the floor"; where the floor lies
        # below -6 V the board driver reports the nominal -12 V (drivers/pilot.py).
        at_min = (adc_min_mv - offset_mv) * gain_den // gain_num
        self._below_floor_mv = -SUPPLY_MV if at_min <= -6000 else at_min

    def _noise(self):
        if not self.noise_mv:
            return 0
        self._rng = _lcg_next(self._rng)
        # The top bits of an LCG are the random ones.
        return (self._rng >> 12) % (2 * self.noise_mv + 1) - self.noise_mv

    def adc(self, pin_mv):
        """Pin millivolts -> what the ADC reports in millivolts (quantised, clamped)."""
        pin_mv += self._noise()
        if pin_mv < 0:
            pin_mv = 0
        code = (pin_mv * self.adc_max_code + self.adc_full_mv // 2) // self.adc_full_mv
        if code > self.adc_max_code:
            code = self.adc_max_code
        mv = (code * self.adc_full_mv + self.adc_max_code // 2) // self.adc_max_code
        if mv < self.adc_min_mv:
            return self.adc_min_mv
        if mv > self.adc_max_mv:
            return self.adc_max_mv
        return mv

    def cp_pin_mv(self, cp_mv):
        return self.offset_mv + cp_mv * self.gain_num // self.gain_den

    def measure_cp(self, cp_mv):
        """Connector millivolts as the board reads them back through front end and ADC."""
        pin = self.adc(self.cp_pin_mv(cp_mv))
        if pin <= self.adc_min_mv:
            return self._below_floor_mv
        return (pin - self.offset_mv) * self.gain_den // self.gain_num

    def measure_pp(self, ohms):
        """PP-PE ohms as the board reads them, PP_OPEN when the pin sits at the top."""
        if ohms >= PP_OPEN:
            pin = self.pp_supply_mv
        else:
            pin = self.pp_supply_mv * ohms // (ohms + self.pp_pullup_ohms)
        mv = self.adc(pin)
        if mv >= self.adc_max_mv:
            return PP_OPEN
        return self.pp_pullup_ohms * mv // (self.pp_supply_mv - mv)


# -- the EV as a load ------------------------------------------------------------------------

def offered_ma(duty_permille):
    """The current an EV reads from the duty (IEC 61851-1 Table A.8), 0 when none: the EV's
    view, independent of the firmware's own coding so that a wrong duty shows up."""
    d = duty_permille
    if d < 80 or d >= 1000:
        return 0
    if d <= 100:
        return 6000
    if d <= 850:
        return d * 60
    if d <= 960:
        return (d - 640) * 250
    return 0


class EVLoad:
    """How much current the EV takes per phase.

    It takes min(wanted, offered) while S2 is closed, the PWM offers at least 6 A and the
    contacts are closed. After the offer disappears it keeps drawing for `stop_ms` (an EV
    must stop within 3 s of the PWM going away, IEC 61851-1 Annex A). `overdraw` makes it
    ignore the offer (the "EV draws more than offered" fault).
    """

    def __init__(self, phases=3, wanted_ma=16000, stop_ms=1000, voltage_mv=230000):
        self.phases = phases
        self.wanted_ma = wanted_ma
        self.stop_ms = stop_ms
        self.voltage_mv = voltage_mv
        self.overdraw = False
        self.current_ma = 0
        self._last_offer_ms = None

    def update(self, now_ms, requesting, duty_permille, contacts_closed):
        offer = offered_ma(duty_permille)
        if offer:
            self._last_offer_ms = now_ms
        if not (requesting and contacts_closed):
            self.current_ma = 0
            return 0
        if self.overdraw:
            self.current_ma = self.wanted_ma
        elif offer:
            self.current_ma = min(self.wanted_ma, offer)
        elif self._last_offer_ms is not None and now_ms - self._last_offer_ms < self.stop_ms:
            pass  # still ramping down: keeps the last current
        else:
            self.current_ma = 0
        return self.current_ma

    def power_w(self):
        return self.phases * self.current_ma * (self.voltage_mv // 1000) // 1000


class MeterRefresh:
    """When a simulated meter's registers must be rewritten to follow the EV: at once when
    the current changes (the station's over-current logic reads it), and while only the
    energy moves at most every `period_ms`. A key is a tuple whose first item is the
    current; the simulator and the benchmarks share this rule."""

    def __init__(self, period_ms=500):
        self.period_ms = period_ms
        self._key = None
        self._at = 0

    def due(self, now_ms, key):
        last = self._key
        if key == last:
            return False
        return last is None or key[0] != last[0] or now_ms - self._at >= self.period_ms

    def written(self, now_ms, key):
        self._key = key
        self._at = now_ms


class MeterNoise:
    """A little seeded noise on a meter's readings: voltage +/-0.5 V, current +/-0.3 %
    (at least 10 mA) when current flows, exactly zero when none does."""

    def __init__(self, seed=1):
        self._rng = (seed * 2246822519 + 7) & _LCG_MASK

    def _next(self, span):
        self._rng = _lcg_next(self._rng)
        return (self._rng >> 12) % (2 * span + 1) - span

    def voltage(self, dv):
        return dv + self._next(5) if dv > 0 else 0

    def current(self, ma):
        if ma <= 0:
            return 0
        span = ma * 3 // 1000
        return max(1, ma + self._next(span if span > 10 else 10))


class EnergyCounter:
    """Integrates power over simulated time into Wh without losing the remainder."""

    def __init__(self, start_wh=0):
        self.wh = start_wh
        self._mws = 0       # milliwatt-seconds == W*ms, below one Wh

    def add(self, power_w, ms):
        self._mws += power_w * ms
        whole = self._mws // 3600000
        if whole:
            self.wh += whole
            self._mws -= whole * 3600000
