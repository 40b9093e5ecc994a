"""The station's fault table and the set of active faults.

One table says for every fault: its code, its name, a plain-language text for support
staff, how it clears, whether it may be cleared from the backend, whether it stops charging,
and the OCPP 1.6 ChargePointErrorCode it is reported as. It is a constant tuple of constant
rows, which a frozen image keeps in flash: `by_code`, `by_name` and `all_faults` make Fault
views of its rows on demand, the masks and the safety tick read it directly. docs/faults.md
is generated from this table (tools/gen_faults_doc.py) and a test keeps the two equal.

How a fault clears (`clearing`):
  AUTO    clears itself once its cause has been gone for `auto_clear_ms`
  UNPLUG  latched until the EV is unplugged (state A) with the cause gone, or a clear request
  MANUAL  latched until someone clears it (on site, or remotely where `remote_clear` allows)
A clear request is refused while the cause is still present, whatever the clearing mode.
No reset clears an UNPLUG or MANUAL fault: they are kept on flash (firmware/safestate.py) and
restored at boot before the first tick, whatever reset the station (command, watchdog, crash,
power cut). Only AUTO faults start afresh.

The module that detects a cause calls `raise_()` while it is present and `clear()` once it is
gone; the charge controller raises the charging faults, the meter service, MQTT link, storage
and main raise theirs through the same calls. Codes stay below 30 so that the `active`
bitmask is a small int on the ESP32 (no allocation).
"""
from array import array

from firmware.compat import const, ticks_diff
from firmware.events import EV_FAULT_CLEARED, EV_FAULT_RAISED

AUTO = const(0)
UNPLUG = const(1)
MANUAL = const(2)
CLEARING_NAMES = ("auto", "unplug", "manual")

# Fault codes (public: MQTT, OCPP and support tools use the numbers; never renumber).
CP_SHORT = const(1)
PILOT_FAULT = const(2)
DIODE_FAULT = const(3)
RCD_TRIPPED = const(4)
RCD_SELFTEST_FAILED = const(5)
CONTACTOR_WELDED = const(6)
CONTACTOR_NOT_CLOSING = const(7)
OVERCURRENT = const(8)
OVERTEMP = const(9)
TEMP_SENSOR_FAILED = const(10)
PP_INVALID = const(11)
VENTILATION_UNSUPPORTED = const(12)
LOCK_FAILED = const(13)
METER_STALE = const(14)
METER_IMPLAUSIBLE = const(15)
BACKEND_OFFLINE = const(16)
STORAGE_ERROR = const(17)
OUTBOX_OVERFLOW = const(18)
INTERNAL_ERROR = const(19)

MAX_CODE = const(29)


class FaultError(ValueError):
    pass


class Fault:
    """A view of one row of the fault table, made on demand (not for the safety tick)."""

    def __init__(self, row):
        (self.code, self.name, self.clearing, self.auto_clear_ms, self.remote_clear,
         self.blocking, self.ocpp, self.text) = row


# The table: one constant tuple of constant rows, so a frozen image keeps it in flash (no
# RAM). Row n describes code n + 1, in this order:
#   code, name, clearing, auto_clear_ms, remote_clear,
#   blocking (True: stops charging, the contactor stays open),
#   ocpp (the OCPP 1.6 ChargePointErrorCode), text
# auto_clear_ms stays below 8192 (a small int in a frozen constant: no allocation).
_TABLE = (
    (CP_SHORT, "CP_SHORT", AUTO, 1000, True, True, "EVCommunicationError",
     "The control pilot is shorted to earth (state E). Check the cable, the plug and the"
     " vehicle inlet for damage or water."),
    (PILOT_FAULT, "PILOT_FAULT", AUTO, 5000, True, True, "EVCommunicationError",
     "The control pilot shows a voltage no vehicle can produce. Check the cable; if it"
     " happens with several vehicles, the charge point's pilot circuit is faulty."),
    (DIODE_FAULT, "DIODE_FAULT", UNPLUG, 0, False, True, "EVCommunicationError",
     "The vehicle's pilot diode is missing or shorted. Charging stays blocked until the"
     " cable is unplugged; if it recurs, the vehicle or cable needs a repair."),
    (RCD_TRIPPED, "RCD_TRIPPED", UNPLUG, 0, False, True, "GroundFailure",
     "The residual-current monitor detected a leakage current and stopped charging."
     " Unplug the vehicle to reset. Repeated trips: have the vehicle and installation"
     " checked."),
    (RCD_SELFTEST_FAILED, "RCD_SELFTEST_FAILED", MANUAL, 0, True, True, "OtherError",
     "The residual-current monitor failed its self-test, so leakage could go undetected."
     " Charging is blocked. After clearing, the next session tests it again."),
    (CONTACTOR_WELDED, "CONTACTOR_WELDED", MANUAL, 0, False, True, "PowerSwitchFailure",
     "The main contactor stayed closed after it was told to open (welded contacts): the"
     " socket may be live. A technician must replace the contactor and clear this on"
     " site."),
    (CONTACTOR_NOT_CLOSING, "CONTACTOR_NOT_CLOSING", UNPLUG, 0, True, True,
     "PowerSwitchFailure",
     "The main contactor did not report closed after it was told to close. Check the"
     " coil, its supply and the mirror contact wiring."),
    (OVERCURRENT, "OVERCURRENT", UNPLUG, 0, True, True, "OverCurrentFailure",
     "The vehicle drew clearly more current than offered for several seconds, so the"
     " session was stopped. Unplugging resets it."),
    (OVERTEMP, "OVERTEMP", AUTO, 0, True, True, "HighTemperature",
     "The socket or contactor reached its stop temperature. Charging resumes by itself"
     " once it has cooled down; check for loose terminals if it recurs."),
    (TEMP_SENSOR_FAILED, "TEMP_SENSOR_FAILED", AUTO, 5000, True, True, "OtherError",
     "The temperature sensor gives no plausible reading, so overheating could not be"
     " detected. Charging is blocked until it reads normally again."),
    (PP_INVALID, "PP_INVALID", AUTO, 0, True, True, "OtherError",
     "The cable's proximity (PP) resistor is missing or out of range, so the cable's"
     " current rating is unknown. Try another cable."),
    (VENTILATION_UNSUPPORTED, "VENTILATION_UNSUPPORTED", AUTO, 0, True, True,
     "OtherError",
     "The vehicle asks to charge with ventilation (state D), which this charge point does"
     " not provide. It clears when the vehicle stops asking."),
    (LOCK_FAILED, "LOCK_FAILED", UNPLUG, 0, True, True, "ConnectorLockFailure",
     "The socket lock did not confirm locked. Check the lock and that the plug is fully"
     " inserted; unplugging resets it."),
    (METER_STALE, "METER_STALE", AUTO, 0, True, False, "PowerMeterFailure",
     "The energy meter does not answer. Charging continues, but energy is not measured"
     " and over-current is not checked until it answers again."),
    (METER_IMPLAUSIBLE, "METER_IMPLAUSIBLE", AUTO, 0, True, False, "PowerMeterFailure",
     "The energy meter reports values that cannot be right (energy running backwards,"
     " power beyond the installation). Check the meter wiring and its configuration."),
    (BACKEND_OFFLINE, "BACKEND_OFFLINE", AUTO, 0, True, False, "OtherError",
     "The charge point cannot reach the backend. It charges by its offline rules and"
     " sends the stored records when the connection returns."),
    (STORAGE_ERROR, "STORAGE_ERROR", AUTO, 0, True, False, "InternalError",
     "Writing to the internal flash failed. Records may not survive a restart; if it"
     " persists the flash is worn or full."),
    (OUTBOX_OVERFLOW, "OUTBOX_OVERFLOW", AUTO, 0, True, False, "OtherError",
     "More records waited for the backend than the buffer holds: the oldest telemetry,"
     " then the oldest fault records were dropped (counted in the diagnostics)."
     " Transactions are kept."),
    (INTERNAL_ERROR, "INTERNAL_ERROR", MANUAL, 0, True, False, "InternalError",
     "The firmware hit an internal error: it restarted, or a background task (meter,"
     " sessions, backend link) failed and was skipped while charging control went on."
     " The error text is in the boot report or the diagnostics; clear this after"
     " reading it."),
)

_N = MAX_CODE + 1
_CODE = const(0)
_NAME = const(1)
_CLEARING = const(2)
_AUTO_CLEAR_MS = const(3)
_BLOCKING = const(5)


def _masks():
    blocking = auto = unplug = 0
    for i in range(len(_TABLE)):
        row = _TABLE[i]
        code = row[_CODE]
        if code != i + 1 or code > MAX_CODE or row[_AUTO_CLEAR_MS] > 8191:
            raise FaultError("fault table: row %d has code %d" % (i, code))
        bit = 1 << code
        if row[_BLOCKING]:
            blocking |= bit
        if row[_CLEARING] == AUTO:
            auto |= bit
        elif row[_CLEARING] == UNPLUG:
            unplug |= bit
    return blocking, auto, unplug


BLOCKING_MASK, _AUTO_MASK, _UNPLUG_MASK = _masks()
# The faults a reset must not clear (UNPLUG and MANUAL): firmware/safestate.py keeps them on
# flash and FaultSet.restore() brings them back at boot.
LATCHED_MASK = ((1 << (len(_TABLE) + 1)) - 2) & ~_AUTO_MASK
del _masks


def all_faults():
    """Every row of the table, as Fault views (allocates: for tools and tests)."""
    return [Fault(row) for row in _TABLE]


def by_code(code):
    """The table row for `code`; FaultError for an unknown code."""
    if isinstance(code, int) and 0 < code <= len(_TABLE):
        return Fault(_TABLE[code - 1])
    raise FaultError("unknown fault code %r" % (code,))


def by_name(name):
    """The table row for `name` (e.g. "RCD_TRIPPED"); FaultError for an unknown name."""
    for row in _TABLE:
        if row[_NAME] == name:
            return Fault(row)
    raise FaultError("unknown fault %r" % (name,))


def names(mask):
    """The names of the faults in a bitmask (allocates: not for the safety tick)."""
    return [row[_NAME] for row in _TABLE if mask >> row[_CODE] & 1]


class FaultSet:
    """The active faults, with a history ring and per-code counters.

    `raise_`, `clear`, `update`, `unplugged`, `is_active` and `blocking` allocate nothing and
    may run in the safety tick. `clear_request` and the readers may allocate.
    """

    def __init__(self, events=None, history=32):
        self.events = events
        self.active = 0          # bit n set: fault code n is active
        self._present = 0        # bit n set: its cause is still present
        self._gone_at = array("i", [0] * _N)
        self.counts = array("i", [0] * _N)     # times each code was raised
        self._h_t = array("i", [0] * history)
        self._h_code = array("i", [0] * history)
        self._h_head = 0
        self._h_count = 0

    def _record(self, now_ms, code, raised):
        i = self._h_head
        self._h_t[i] = now_ms
        # a raised record stores +code, a cleared one -code: one array, no tuples
        self._h_code[i] = code if raised else -code
        i += 1
        if i == len(self._h_t):
            i = 0
        self._h_head = i
        if self._h_count < len(self._h_t):
            self._h_count += 1

    def raise_(self, code, now_ms, present=True):
        """Mark `code` active. `present=False` records a fault whose cause has already gone
        (a crash found at boot, an over-current episode that ended). Returns True when the
        fault was not active before."""
        bit = 1 << code
        if present:
            self._present |= bit
        else:
            self._present &= ~bit
            self._gone_at[code] = now_ms
        if self.active & bit:
            return False
        self.active |= bit
        if self.counts[code] < 0x3FFFFFFF:
            self.counts[code] += 1
        self._record(now_ms, code, True)
        if self.events is not None:
            self.events.push(now_ms, EV_FAULT_RAISED, code, 0)
        return True

    def clear(self, code, now_ms):
        """The cause of `code` is gone. AUTO faults clear after their auto_clear_ms (see
        `update`); latched ones stay active until unplug or a clear request."""
        bit = 1 << code
        if self._present & bit:
            self._present &= ~bit
            self._gone_at[code] = now_ms
        if self.active & bit and _AUTO_MASK & bit and _TABLE[code - 1][_AUTO_CLEAR_MS] == 0:
            self._drop(code, now_ms, 0)

    def _drop(self, code, now_ms, requested):
        self.active &= ~(1 << code)
        self._record(now_ms, code, False)
        if self.events is not None:
            self.events.push(now_ms, EV_FAULT_CLEARED, code, requested)

    def update(self, now_ms):
        """Clear the AUTO faults whose cause has been gone long enough."""
        pending = self.active & ~self._present & _AUTO_MASK
        code = 0
        while pending:
            if pending & 1 and ticks_diff(now_ms, self._gone_at[code]) >= _TABLE[code - 1][_AUTO_CLEAR_MS]:
                self._drop(code, now_ms, 0)
            pending >>= 1
            code += 1

    def unplugged(self, now_ms):
        """The EV was unplugged (state A): clear the UNPLUG-latched faults whose cause is gone."""
        pending = self.active & ~self._present & _UNPLUG_MASK
        code = 0
        while pending:
            if pending & 1:
                self._drop(code, now_ms, 0)
            pending >>= 1
            code += 1

    def latched(self):
        """Bitmask of the active faults a reset must not clear (no allocation)."""
        return self.active & LATCHED_MASK

    def latched_present(self):
        """Bitmask of those whose cause is still present (no allocation)."""
        return self.active & self._present & LATCHED_MASK

    def restore(self, mask, present, now_ms):
        """Make the latched faults of `mask` active again after a reset (before the first
        tick), those in `present` with their cause present, as it was at the reset. They
        were raised and reported before it: no event, no count, a history entry only. They
        clear as the table says: at the next unplug with the cause gone (UNPLUG) or by a
        clear request (MANUAL), which is refused while the cause is present (a welded
        contact is present until the mirror check reads it open). Returns the faults it
        made active."""
        new = mask & LATCHED_MASK & ~self.active
        self.active |= new
        code = 0
        pending = new
        while pending:
            if pending & 1:
                if present >> code & 1:
                    self._present |= 1 << code
                else:
                    self._present &= ~(1 << code)
                    self._gone_at[code] = now_ms
                self._record(now_ms, code, True)
            pending >>= 1
            code += 1
        return new

    def is_active(self, code):
        return bool(self.active >> code & 1)

    def is_present(self, code):
        return bool(self._present >> code & 1)

    def blocking(self):
        """Bitmask of the active faults that stop charging (0 when none)."""
        return self.active & BLOCKING_MASK

    def clear_request(self, code, remote, now_ms):
        """A person asks to clear `code` (`remote`: from the backend). Returns None when it was
        cleared, else the reason it was refused. Never clears a fault whose cause is present."""
        try:
            f = by_code(code)
        except FaultError as e:
            return str(e)
        bit = 1 << code
        if not self.active & bit:
            return "%s is not active" % f.name
        if remote and not f.remote_clear:
            return "%s may only be cleared on site" % f.name
        if self._present & bit:
            return "%s: its cause is still present" % f.name
        self._drop(code, now_ms, 1)
        return None

    def active_names(self):
        return names(self.active)

    def history(self, n=None):
        """Up to `n` newest (t_ms, code, raised) records, oldest first (allocates)."""
        size = len(self._h_t)
        count = self._h_count if n is None or n > self._h_count else n
        out = []
        for age in range(self._h_count - count, self._h_count):
            i = (self._h_head - self._h_count + age) % size
            c = self._h_code[i]
            out.append((self._h_t[i], c if c > 0 else -c, c > 0))
        return out
