"""Session price from energy, charging time and idle time, in integer minor currency units.

    energy   = energy_wh * price_per_kwh_minor / 1000
    charging = charging_s * price_per_min_charging_minor / 60
    idle     = max(0, idle_s - idle_grace_min * 60) * price_per_min_idle_minor / 60
    fee      = session_fee_minor, only when the session delivered energy or charged for
               some time (a car that plugs in and leaves uncharged pays nothing)
    total    = energy + charging + idle + fee

Rounding: each component is computed exactly as a fraction and rounded half up once, to
whole minor units; the total is the sum of the rounded components, so the breakdown always
adds up to the total. Time is billed by the second (pro rata per minute), not per started
minute. The grace period applies once per session, to the sum of its idle periods.

`idle_s` here is the idle time the EV is answerable for (see firmware/session.py: time
connected with current offered but not drawn); pauses the station imposes are not billed.

The record carries the tariff id and the prices used, so the backend can re-rate.
"""

_KEYS = ("tariff_id", "currency", "price_per_kwh_minor", "price_per_min_charging_minor",
         "price_per_min_idle_minor", "idle_grace_min", "session_fee_minor")


class TariffError(ValueError):
    pass


def _div_half_up(num, den):
    # num >= 0, den > 0: num / den rounded to the nearest integer, halves up.
    return (2 * num + den) // (2 * den)


def _amount(name, value):
    if value is None:
        return 0
    if value is True or value is False or not isinstance(value, int) or value < 0:
        raise TariffError("%s: expected a non-negative integer, got %r" % (name, value))
    return value


class Tariff:
    def __init__(self, tariff_id="default", currency="EUR", price_per_kwh_minor=0,
                 price_per_min_charging_minor=0, price_per_min_idle_minor=0,
                 idle_grace_min=0, session_fee_minor=0):
        if not isinstance(tariff_id, str) or not tariff_id:
            raise TariffError("tariff_id: expected a non-empty string")
        if not isinstance(currency, str) or len(currency) != 3:
            raise TariffError("currency: expected a 3-letter ISO 4217 code")
        self.tariff_id = tariff_id
        self.currency = currency
        self.per_kwh = _amount("price_per_kwh_minor", price_per_kwh_minor)
        self.per_min_charging = _amount("price_per_min_charging_minor", price_per_min_charging_minor)
        self.per_min_idle = _amount("price_per_min_idle_minor", price_per_min_idle_minor)
        self.idle_grace_min = _amount("idle_grace_min", idle_grace_min)
        self.session_fee = _amount("session_fee_minor", session_fee_minor)

    @classmethod
    def from_config(cls, cfg):
        return cls(*[cfg[k] for k in _KEYS])

    def to_dict(self):
        """The prices as config keys: stored with a live session so a recovered session is
        priced as it started, even if the tariff changed meanwhile."""
        return {
            "tariff_id": self.tariff_id, "currency": self.currency,
            "price_per_kwh_minor": self.per_kwh,
            "price_per_min_charging_minor": self.per_min_charging,
            "price_per_min_idle_minor": self.per_min_idle,
            "idle_grace_min": self.idle_grace_min,
            "session_fee_minor": self.session_fee,
        }

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise TariffError("tariff: expected an object")
        try:
            return cls(*[d[k] for k in _KEYS])
        except KeyError as e:
            raise TariffError("tariff: missing %s" % e.args[0])

    def cost(self, energy_wh, charging_s, idle_s):
        """(total_minor, breakdown). Inputs are non-negative integers (energy None = unknown,
        priced as 0). breakdown: energy_minor, charging_minor, idle_minor, fee_minor,
        idle_billed_s."""
        energy_wh = _amount("energy_wh", energy_wh)
        charging_s = _amount("charging_s", charging_s)
        idle_s = _amount("idle_s", idle_s)
        billed_idle = idle_s - self.idle_grace_min * 60
        if billed_idle < 0:
            billed_idle = 0
        energy = _div_half_up(energy_wh * self.per_kwh, 1000)
        charging = _div_half_up(charging_s * self.per_min_charging, 60)
        idle = _div_half_up(billed_idle * self.per_min_idle, 60)
        fee = self.session_fee if (energy_wh or charging_s) else 0
        return energy + charging + idle + fee, {
            "energy_minor": energy, "charging_minor": charging, "idle_minor": idle,
            "fee_minor": fee, "idle_billed_s": billed_idle,
        }
