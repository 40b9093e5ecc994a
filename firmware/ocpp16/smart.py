"""OCPP 1.6 Smart Charging (section 3.13): the installed charging profiles, their composite
limit and the moment it next changes; the limit reaches the charger through the station's
backend-limit path (StationOps.set_limit: under 6 A offers nothing, IEC 61851-1).

Nothing here runs per tick but a ticks comparison: the composite limit and the time of its
next change are computed when a profile is set or cleared, a transaction starts or ends,
the clock is set, or that time comes (a period's start, a schedule's end, a recurrence, a
validFrom/validTo). The time is the wall clock in whole seconds: the clock is read in the
loop iterations just before a change (the last second, or the last 50 ms once a change has
shown in which iteration a second begins), so the new limit is handed to the charger in
the first loop iteration of its second and the PWM follows at the next tick. Reading the
clock allocates on the ESP32 (an RTC tuple, a long int): a handful of times per change.

A profile is one tuple (the same array on flash, in PROFILES_FILE, all of them written
atomically at each change; seconds counted from 2020-01-01 so they stay small ints on the
ESP32 until 2054):
    (id, connectorId, stackLevel, purpose, kind, recurrence_s, transactionId,
     validFrom, validTo, startSchedule, duration, unit, minChargingRate, periods)
purpose: CP_MAX / TX_DEFAULT / TX; kind: ABSOLUTE / RECURRING / RELATIVE; recurrence_s:
86400 (Daily), 604800 (Weekly) or 0; unit: UNIT_A / UNIT_W; limits and minChargingRate in
tenths of the unit; periods: a flat tuple (startPeriod, limit, numberPhases or 0, ...).
None where the profile has no such field.
"""
import json

from firmware.compat import const, ticks_add, ticks_diff

PROFILES_FILE = "ocpp_cp.json"

EPOCH_2020 = 1577836800          # 2020-01-01T00:00:00Z in seconds since 1970
NOMINAL_V = const(230)           # W <-> A (docs/ocpp.md): 230 V per phase
MAX_PROFILES = const(8)          # MaxChargingProfilesInstalled
MAX_PERIODS = const(24)          # ChargingScheduleMaxPeriods
MAX_STACK = const(8)             # ChargeProfileMaxStackLevel
_MAX_WAIT_S = const(3600)        # recomputed at least hourly: a clock that was set meanwhile
_GUARD_MS = const(50)            # with a known second edge: the clock read from this early
_EDGE_GAP_MS = const(50)         # two clock reads this close bracket a second's edge
_EDGE_MAX_AGE_MS = const(14400000)   # a second edge learnt is trusted for 4 h
_LIMIT_MAX_MA = const(80000)     # the charger's range (CURRENT_MAX_MA)

CP_MAX = const(0)
TX_DEFAULT = const(1)
TX = const(2)
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
ABSOLUTE = const(0)
RECURRING = const(1)
RELATIVE = const(2)
KINDS = ("Absolute", "Recurring", "Relative")
UNIT_A = const(0)
UNIT_W = const(1)
UNITS = ("A", "W")

_ID = const(0)
_CONN = const(1)
_STACK = const(2)
_PURPOSE = const(3)
_KIND = const(4)
_RECUR = const(5)
_TX_ID = const(6)
_FROM = const(7)
_TO = const(8)
_START = const(9)
_DURATION = const(10)
_UNIT = const(11)
_MIN_RATE = const(12)
_PERIODS = const(13)


def _earlier(a, b):
    if a is None:
        return b
    if b is None or a < b:
        return a
    return b


def evaluate(p, t, tx_start):
    """(limit in tenths of its unit or None, numberPhases or 0, the next time this may
    change or None) of profile `p` at `t` (seconds since 2020); `tx_start`: when the running
    transaction started (None: none runs), the origin of a Relative schedule."""
    vf = p[_FROM]
    if vf is not None and t < vf:
        return None, 0, vf
    nxt = p[_TO]
    if nxt is not None and t >= nxt:
        return None, 0, None
    kind = p[_KIND]
    per = p[_RECUR]
    if kind == RELATIVE:
        if tx_start is None:
            return None, 0, nxt        # a transaction's start recomputes
        base = tx_start
    elif kind == RECURRING:
        base = p[_START]
        if t >= base:
            base += (t - base) // per * per
            nxt = _earlier(nxt, base + per)   # the next recurrence
    else:
        base = p[_START]
    off = t - base
    if off < 0:
        return None, 0, _earlier(nxt, base)
    dur = p[_DURATION]
    if dur is not None:
        if off >= dur:
            return None, 0, nxt
        nxt = _earlier(nxt, base + dur)
    ps = p[_PERIODS]
    i = -1
    j = 0
    while j < len(ps) and ps[j] <= off:
        i = j
        j += 3
    if j < len(ps):
        nxt = _earlier(nxt, base + ps[j])
    if i < 0:
        return None, 0, nxt
    return ps[i + 1], ps[i + 2], nxt


def to_ma(limit, unit, phases):
    """A limit in tenths of A or W as mA per phase; W over `phases` at 230 V."""
    if unit == UNIT_A:
        return limit * 100
    return limit * 100 // (NOMINAL_V * phases)


def used_phases(number_phases, phases):
    """The phases a period charges on: its numberPhases, 3 when it names none (OCPP 1.6
    7.13: "numberPhases=3 will be assumed unless another number is given"), never more
    than the station is wired for (`phases`)."""
    n = number_phases or 3
    return n if n < phases else phases


def _best(profiles, purpose, t, tx_start, tx_id, phases):
    """(mA or None, its minChargingRate in mA or 0, the phases it charges on, next change)
    of the purpose's profile that wins at `t`: a connector's own over connector 0's, then
    the highest stackLevel with a period running now."""
    best = None
    low = 0
    used = phases
    rank = -1
    nxt = None
    for p in profiles:
        if p[_PURPOSE] != purpose:
            continue
        if purpose == TX and (tx_start is None or p[_TX_ID] is not None and p[_TX_ID] != tx_id):
            continue
        lim, ph, n = evaluate(p, t, tx_start)
        nxt = _earlier(nxt, n)
        r = p[_CONN] * 100 + p[_STACK]
        if lim is not None and r > rank:
            rank = r
            used = used_phases(ph, phases)
            best = to_ma(lim, p[_UNIT], used)
            m = p[_MIN_RATE]
            low = 0 if m is None else to_ma(m, p[_UNIT], used)
    return best, low, used, nxt


def composite(profiles, t, tx_start, tx_id, phases, connector=1, detail=False):
    """(limit in mA or None: no profile applies, the next time it may change or None):
    min(ChargePointMaxProfile, TxProfile if one applies else TxDefaultProfile) (OCPP 1.6
    3.13.4). Connector 0 is the station's supply: the ChargePointMaxProfile alone.

    A W limit is turned into A over the phases its period charges on (used_phases). A limit
    below the minChargingRate of a schedule in force is 0: the EV cannot charge that slowly
    (7.13), so the charger pauses instead of offering it a rate it cannot use.
    `detail`: the phases of the limit come third (GetCompositeSchedule's W)."""
    lim, low, ph, nxt = _best(profiles, CP_MAX, t, tx_start, tx_id, phases)
    if connector != 0:
        tx, tlow, tph, n = _best(profiles, TX, t, tx_start, tx_id, phases)
        nxt = _earlier(nxt, n)
        dflt, dlow, dph, n = _best(profiles, TX_DEFAULT, t, tx_start, tx_id, phases)
        nxt = _earlier(nxt, n)
        if tx is None:
            tx, tlow, tph = dflt, dlow, dph
        if tx is not None:
            if lim is None or tx < lim:
                lim, ph = tx, tph
            if tlow > low:
                low = tlow
    if lim is not None and lim < low:
        lim = 0
    if detail:
        return lim, nxt, ph
    return lim, nxt


def load(store):
    """The profiles on flash (a damaged file counts as none: the central system sets them
    again at its next SetChargingProfile)."""
    try:
        raw = store.read(PROFILES_FILE)
        if raw is None:
            return []
        out = []
        for a in json.loads(raw):
            if len(a) != _PERIODS + 1:
                continue              # not one of ours (a newer layout): dropped
            a[_PERIODS] = tuple(a[_PERIODS])
            out.append(tuple(a))
        return out
    except (OSError, ValueError, TypeError, IndexError, KeyError):
        return []


class SmartCharging:
    """The installed profiles of one station and the limit they set now."""

    def __init__(self, store, profiles=None):
        self.store = store
        self.profiles = load(store) if profiles is None else profiles
        self.limit_ma = None        # the composite limit in force (None: no profile applies)
        self._applied = False       # set on the station once
        self._dirty = True          # recompute at the next step
        self._fine = False          # just before a change: the clock each loop iteration
        self._read_at = 0           # ticks of the last such read
        self._edge = None           # (ticks, second since 2020) when that second began
        self._due = 0               # ticks: look at the clock again
        self._at = None             # the next change (seconds since 2020), None: none known
        self.recomputes = 0

    # -- the profiles ------------------------------------------------------------------------
    def _keep(self, profiles):
        # On flash first: a profile that could not be stored is not applied either.
        if profiles:
            self.store.write_atomic(PROFILES_FILE, json.dumps(profiles).encode())
        else:
            self.store.remove(PROFILES_FILE)
        self.profiles = profiles
        self._dirty = True

    def install(self, profile):
        """Replace the profile of the same id, or of the same stackLevel, purpose and
        connector (OCPP 1.6 3.13.2); False when MaxChargingProfilesInstalled is reached."""
        keep = [p for p in self.profiles
                if p[_ID] != profile[_ID] and not (p[_STACK] == profile[_STACK]
                                                   and p[_PURPOSE] == profile[_PURPOSE]
                                                   and p[_CONN] == profile[_CONN])]
        if len(keep) >= MAX_PROFILES:
            return False
        keep.append(profile)
        self._keep(keep)
        return True

    def clear(self, pid=None, conn=None, purpose=None, stack=None):
        """ClearChargingProfile: with an id that one profile, else every profile matching all
        the criteria given. The number removed."""
        keep = []
        for p in self.profiles:
            if pid is not None:
                hit = p[_ID] == pid
            else:
                hit = ((conn is None or p[_CONN] == conn)
                       and (purpose is None or p[_PURPOSE] == purpose)
                       and (stack is None or p[_STACK] == stack))
            if not hit:
                keep.append(p)
        n = len(self.profiles) - len(keep)
        if n:
            self._keep(keep)
        return n

    def transaction_ended(self):
        """TxProfiles end with their transaction (OCPP 1.6 3.13.1)."""
        self.clear(purpose=TX)
        self._dirty = True

    def idle(self):
        """No profile left, and the limit of the last one lifted."""
        return not self.profiles and self._applied and self.limit_ma is None

    def changed(self):
        """Look again at the next step (a transaction started, the clock was set)."""
        self._dirty = True

    # -- the limit ---------------------------------------------------------------------------
    def step(self, b, now):
        """Once per loop iteration; `b` the backend (its clock, transaction, station)."""
        if not self._dirty and not self._fine and ticks_diff(now, self._due) < 0:
            return
        wall = b.time(now)
        if wall == 0:
            # No clock yet (no RTC, no central system's time): the limit restored from flash
            # stays; the central system's time (BootNotification.conf) recomputes.
            self._dirty = False
            self._wait(now, 0, None)
            return
        t = wall - EPOCH_2020
        at = self._at
        polled = self._fine and ticks_diff(now, self._read_at) <= _EDGE_GAP_MS
        self._read_at = now
        if not self._dirty and at is not None and t < at:
            self._wait(now, t, at)
            return
        if polled and t == at:
            self._edge = (now, t)     # the second `at` began since the previous read
        self._dirty = False
        self.recomputes += 1
        r = b.log.running
        tx_start = None if r is None else r[3] - EPOCH_2020
        lim, at = composite(self.profiles, t, tx_start, b.log.running_tx_id(),
                            b.cfg["phases"])
        if lim is not None and lim > _LIMIT_MAX_MA:
            lim = _LIMIT_MAX_MA
        self._at = at
        self._wait(now, t, at)
        if lim != self.limit_ma or not self._applied:
            self.limit_ma = lim
            self._applied = True
            b.ops.set_limit(lim, now)

    def _wait(self, now, t, at):
        # The wall clock counts whole seconds. Once the loop iteration in which a second
        # began has been seen (self._edge), the change's second is reckoned from it in ticks
        # and the clock read from _GUARD_MS before; until then from a second early. From
        # there on the clock is read each iteration until its second comes (self._fine).
        self._fine = False
        if at is None:
            ms = _MAX_WAIT_S * 1000
        else:
            ms = (at - t - 1) * 1000
            e = self._edge
            if e is not None:
                age = ticks_diff(now, e[0])
                if age < 0 or age > _EDGE_MAX_AGE_MS or e[1] + age // 1000 != t:
                    self._edge = None     # old, or the clock was set since: learnt anew
                else:
                    ms = (at - e[1]) * 1000 - age - _GUARD_MS
            if ms > _MAX_WAIT_S * 1000:
                ms = _MAX_WAIT_S * 1000
        if ms <= 0:
            self._fine = True
        else:
            self._due = ticks_add(now, ms)
