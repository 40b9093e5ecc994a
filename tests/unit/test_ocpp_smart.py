# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# OCPP 1.6 Smart Charging without a network: the composite limit of the installed profiles
# (stack levels, recurrence, relative schedules, W -> A, validity), SetChargingProfile's
# checks, ClearChargingProfile's filters, GetCompositeSchedule, profiles on flash, and the
# step that hands the limit to the station when (and only when) its second comes.
import unittest

from firmware.config import Config
from firmware.ocpp16 import clock, router, smart
from firmware.ocpp16.ops import set_charging_profile as scp
from firmware.ocpp16.smart import (
    CP_MAX, EPOCH_2020, TX, TX_DEFAULT, SmartCharging, composite, evaluate)
from firmware.ramfs import RamFs
from firmware.storage import Store

try:
    import micropython
    HEAP_LOCK = hasattr(micropython, "heap_lock")
except ImportError:
    HEAP_LOCK = False

DAY = 86400
WEEK = 7 * DAY
# 2026-01-05T00:00:00Z (a Monday), seconds since 2020
MON = 1767571200 - EPOCH_2020


def _period(q):
    out = {"startPeriod": q[0], "limit": q[1]}
    if len(q) > 2:
        out["numberPhases"] = q[2]
    return out


def period(p, s, t0=None):
    """A csChargingProfiles object; `s` the schedule's periods [(startPeriod, limit), ...]
    or [(startPeriod, limit, numberPhases), ...]."""
    sched = {"chargingRateUnit": p.pop("unit", "A"),
             "chargingSchedulePeriod": [_period(q) for q in s]}
    if t0 is not None:
        sched["startSchedule"] = t0
    for k in ("duration", "minChargingRate"):
        if k in p:
            sched[k] = p.pop(k)
    out = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
           "chargingProfileKind": "Absolute", "chargingSchedule": sched}
    out.update(p)
    return out


def make(conn=1, **kw):
    t0 = kw.pop("start", "2026-01-05T00:00:00Z")
    s = kw.pop("periods", [(0, 16)])
    prof = scp.profile(period(kw, s, t0), MON)
    if prof is None:
        return None
    return prof[:1] + (conn,) + prof[2:]


def at(hhmm, day=0):
    return MON + day * DAY + int(hhmm[:2]) * 3600 + int(hhmm[3:]) * 60


class Evaluate(unittest.TestCase):
    def test_absolute_periods_and_the_end_of_the_schedule(self):
        p = make(periods=[(0, 16), (3600, 10.5), (7200, 0)], duration=10800)
        self.assertEqual(evaluate(p, MON - 1, None), (None, 0, MON))
        self.assertEqual(evaluate(p, MON, None), (160, 0, MON + 3600))
        self.assertEqual(evaluate(p, MON + 3600, None), (105, 0, MON + 7200))
        self.assertEqual(evaluate(p, MON + 7300, None), (0, 0, MON + 10800))
        self.assertEqual(evaluate(p, MON + 10800, None), (None, 0, None))

    def test_daily_recurrence_wraps_at_midnight(self):
        # 22:00 -> 06:00 at 8 A, else 16 A: starting at 22:00, a day long.
        p = make(chargingProfileKind="Recurring", recurrencyKind="Daily",
                 start="2026-01-04T22:00:00Z", periods=[(0, 8), (8 * 3600, 16)])
        self.assertEqual(evaluate(p, at("23:59"), None)[:2], (80, 0))
        self.assertEqual(evaluate(p, at("05:59", 1), None), (80, 0, at("06:00", 1)))
        self.assertEqual(evaluate(p, at("06:00", 1), None), (160, 0, at("22:00", 1)))
        # The next recurrence is a change even when the limit repeats: 21:59 -> 22:00.
        self.assertEqual(evaluate(p, at("21:59", 3), None), (160, 0, at("22:00", 3)))
        self.assertEqual(evaluate(p, at("22:00", 3), None)[:2], (80, 0))
        # Before its startSchedule a recurring profile is not in force yet.
        self.assertEqual(evaluate(p, at("21:00", -1), None), (None, 0, at("22:00", -1)))

    def test_weekly_recurrence_wraps_at_the_week(self):
        # Weekends (Saturday 00:00 to Monday 00:00) 32 A, weekdays 10 A.
        p = make(chargingProfileKind="Recurring", recurrencyKind="Weekly",
                 start="2026-01-05T00:00:00Z", periods=[(0, 10), (5 * DAY, 32)])
        self.assertEqual(evaluate(p, at("12:00", 4), None)[:2], (100, 0))
        self.assertEqual(evaluate(p, at("12:00", 5), None), (320, 0, MON + WEEK))
        self.assertEqual(evaluate(p, at("00:00", 7), None), (100, 0, MON + WEEK + 5 * DAY))
        self.assertEqual(evaluate(p, at("12:00", 13 * 7 + 6), None)[:2], (320, 0))

    def test_relative_schedule_runs_from_the_transaction_start(self):
        p = make(chargingProfileKind="Relative", start=None, periods=[(0, 6), (600, 16)])
        self.assertEqual(evaluate(p, MON, None), (None, 0, None))
        tx = MON + 1000
        self.assertEqual(evaluate(p, tx + 10, tx), (60, 0, tx + 600))
        self.assertEqual(evaluate(p, tx + 600, tx), (160, 0, None))

    def test_validity_window(self):
        p = make(validFrom="2026-01-05T08:00:00Z", validTo="2026-01-05T09:00:00Z")
        self.assertEqual(evaluate(p, at("07:00"), None), (None, 0, at("08:00")))
        self.assertEqual(evaluate(p, at("08:30"), None), (160, 0, at("09:00")))
        self.assertEqual(evaluate(p, at("09:00"), None), (None, 0, None))

    def test_watts_become_amperes_over_the_configured_phases_at_230_v(self):
        p = make(unit="W", periods=[(0, 11040)])
        self.assertEqual(composite([p], MON, None, None, 3), (16000, None))
        self.assertEqual(composite([p], MON, None, None, 1), (48000, None))
        self.assertEqual(composite([make(unit="W", periods=[(0, 4140)])], MON, None, None, 3)[0],
                         6000)


class Phases(unittest.TestCase):
    """OCPP 1.6 7.13: numberPhases, 3 when a period names none; W -> A over the phases the
    period charges on, at most those the station is wired for."""

    def test_watts_over_the_periods_number_of_phases(self):
        p = make(unit="W", periods=[(0, 7360, 1), (600, 7360, 2), (1200, 7360)])
        self.assertEqual(composite([p], MON, None, None, 3)[0], 32000)         # 7360 / 230
        self.assertEqual(composite([p], MON + 600, None, None, 3)[0], 16000)   # / 460
        self.assertEqual(composite([p], MON + 1200, None, None, 3)[0], 10666)  # / 690
        # A single-phase station charges on its one phase whatever the period allows.
        self.assertEqual(composite([p], MON + 1200, None, None, 1)[0], 32000)
        self.assertEqual(composite([p], MON + 600, None, None, 1)[0], 32000)
        self.assertEqual(smart.used_phases(0, 3), 3)
        self.assertEqual(smart.used_phases(2, 3), 2)
        self.assertEqual(smart.used_phases(3, 2), 2)

    def test_amperes_are_per_phase_whatever_the_phases(self):
        p = make(periods=[(0, 16, 1)])
        self.assertEqual(composite([p], MON, None, None, 3, 1, True), (16000, None, 1))
        self.assertEqual(composite([make(periods=[(0, 16)])], MON, None, None, 3, 1, True),
                         (16000, None, 3))

    def test_the_limit_that_wins_brings_its_phases(self):
        cap = make(conn=0, chargingProfileId=1, chargingProfilePurpose="ChargePointMaxProfile",
                   periods=[(0, 20)])
        one = make(chargingProfileId=2, periods=[(0, 10, 1)])
        self.assertEqual(composite([cap, one], MON, None, None, 3, 1, True), (10000, None, 1))
        self.assertEqual(composite([cap, one], MON, None, None, 3, 0, True), (20000, None, 3))


class MinChargingRate(unittest.TestCase):
    """OCPP 1.6 7.13 minChargingRate: the EV cannot charge below it, so a composite limit
    under it pauses the charge (0) rather than offering a rate the EV cannot use."""

    def test_a_limit_below_the_minimum_rate_is_zero(self):
        dflt = make(chargingProfileId=1, minChargingRate=8, periods=[(0, 16), (600, 7.5),
                                                                     (1200, 8)])
        self.assertEqual(composite([dflt], MON, None, None, 3)[0], 16000)
        self.assertEqual(composite([dflt], MON + 600, None, None, 3), (0, MON + 1200))
        self.assertEqual(composite([dflt], MON + 1200, None, None, 3)[0], 8000)   # at it: ok

    def test_the_station_maximum_under_the_evs_minimum_pauses(self):
        tx = make(chargingProfileId=2, chargingProfilePurpose="TxProfile", minChargingRate=10,
                  periods=[(0, 32)])
        cap = make(conn=0, chargingProfileId=3, chargingProfilePurpose="ChargePointMaxProfile",
                   periods=[(0, 16), (3600, 9)])
        tx_start = MON - 60
        self.assertEqual(composite([tx, cap], MON, tx_start, 7, 3)[0], 16000)
        self.assertEqual(composite([tx, cap], MON + 3600, tx_start, 7, 3)[0], 0)
        # No transaction: the TxProfile and its minimum do not apply.
        self.assertEqual(composite([tx, cap], MON + 3600, None, None, 3)[0], 9000)

    def test_a_minimum_in_watts_over_the_periods_phases(self):
        # 5520 W = 8 A on three phases, 24 A on one.
        p = make(unit="W", minChargingRate=5520, periods=[(0, 6900), (600, 6900, 1)])
        self.assertEqual(composite([p], MON, None, None, 3)[0], 10000)
        self.assertEqual(composite([p], MON + 600, None, None, 3)[0], 30000)
        low = make(unit="W", minChargingRate=5520, periods=[(0, 4830)])   # 7 A < 8 A
        self.assertEqual(composite([low], MON, None, None, 3)[0], 0)

    def test_the_charger_is_handed_zero(self):
        b = _Backend(MON + EPOCH_2020)
        sc = b.smart_charging()
        sc.install(make(minChargingRate=8, periods=[(0, 16), (60, 7)]))
        for now in range(0, 61000, 10):
            sc.step(b, now)
        self.assertEqual(b.ops.limits, [(0, 16000), (60000, 0)])


class Composite(unittest.TestCase):
    def test_highest_stack_level_with_a_running_period_wins(self):
        low = make(chargingProfileId=1, stackLevel=0, periods=[(0, 16)])
        high = make(chargingProfileId=2, stackLevel=3, periods=[(0, 8)], duration=3600)
        self.assertEqual(composite([low, high], MON + 10, None, None, 3), (8000, MON + 3600))
        # Its schedule over, the next lower stack level applies again.
        self.assertEqual(composite([low, high], MON + 3600, None, None, 3), (16000, None))

    def test_a_connectors_own_default_beats_connector_0s(self):
        station = make(conn=0, chargingProfileId=1, stackLevel=5, periods=[(0, 20)])
        own = make(conn=1, chargingProfileId=2, stackLevel=0, periods=[(0, 12)])
        self.assertEqual(composite([station, own], MON, None, None, 3)[0], 12000)

    def test_tx_profile_over_default_and_the_station_maximum_over_both(self):
        dflt = make(chargingProfileId=1, periods=[(0, 16)])
        tx = make(chargingProfileId=2, chargingProfilePurpose="TxProfile", transactionId=7,
                  periods=[(0, 25)])
        cap = make(conn=0, chargingProfileId=3, chargingProfilePurpose="ChargePointMaxProfile",
                   periods=[(0, 20)])
        tx_start = MON - 60
        self.assertEqual(composite([dflt, tx], MON, tx_start, 7, 3)[0], 25000)
        self.assertEqual(composite([dflt, tx, cap], MON, tx_start, 7, 3)[0], 20000)
        # Another transaction, or none: the TxProfile does not apply.
        self.assertEqual(composite([dflt, tx, cap], MON, tx_start, 8, 3)[0], 16000)
        self.assertEqual(composite([dflt, tx], MON, None, None, 3)[0], 16000)
        # Connector 0: the station's supply, its maximum only.
        self.assertEqual(composite([dflt, tx, cap], MON, tx_start, 7, 3, 0)[0], 20000)
        self.assertEqual(composite([], MON, None, None, 3), (None, None))


class SetProfileChecks(unittest.TestCase):
    def test_what_the_station_cannot_keep_is_none(self):
        self.assertTrue(make() is not None)   # (the port's assertIsNotNone breaks on tuples)
        for bad in ({"stackLevel": 9}, {"periods": [(10, 16)]},
                    {"periods": [(0, 16), (0, 10)]},
                    {"periods": [(i * 60, 16) for i in range(25)]},
                    {"chargingProfileKind": "Recurring"},     # no recurrencyKind
                    {"validFrom": "2026-01-06T00:00:00Z", "validTo": "2026-01-05T00:00:00Z"}):
            self.assertIsNone(make(**bad), bad)

    def test_absolute_without_a_start_starts_on_arrival(self):
        p = make(start=None)
        self.assertEqual(evaluate(p, MON, None), (160, 0, None))

    def test_limits_keep_their_tenths_and_minimum_rate(self):
        p = make(periods=[(0, 10.5)], minChargingRate=6.1)
        self.assertEqual(p[12], 61)
        self.assertEqual(p[13], (0, 105, 0))


class Clear(unittest.TestCase):
    def rig(self):
        sc = SmartCharging(Store("/sc", RamFs()))
        for pid, conn, purpose, stack in ((1, 0, "ChargePointMaxProfile", 0),
                                          (2, 0, "TxDefaultProfile", 0),
                                          (3, 1, "TxDefaultProfile", 1),
                                          (4, 1, "TxDefaultProfile", 2)):
            self.assertTrue(sc.install(make(conn=conn, chargingProfileId=pid,
                                            chargingProfilePurpose=purpose, stackLevel=stack)))
        return sc

    def ids(self, sc):
        return sorted(p[0] for p in sc.profiles)

    def test_filters(self):
        sc = self.rig()
        self.assertEqual(sc.clear(pid=9), 0)
        self.assertEqual(sc.clear(pid=3, conn=0), 1)      # an id names one profile
        self.assertEqual(self.ids(sc), [1, 2, 4])
        self.assertEqual(sc.clear(conn=1, purpose=TX_DEFAULT, stack=1), 0)
        self.assertEqual(sc.clear(purpose=TX_DEFAULT, stack=2), 1)
        self.assertEqual(self.ids(sc), [1, 2])
        self.assertEqual(sc.clear(conn=0), 2)
        self.assertEqual(sc.profiles, [])
        self.assertFalse(sc.store.exists(smart.PROFILES_FILE))

    def test_same_stack_purpose_connector_replaces_and_the_count_is_bounded(self):
        sc = self.rig()
        sc.install(make(conn=1, chargingProfileId=10, stackLevel=2))   # replaces id 4
        self.assertEqual(self.ids(sc), [1, 2, 3, 10])
        for i in range(4):
            self.assertTrue(sc.install(make(chargingProfileId=20 + i, stackLevel=3 + i)))
        self.assertFalse(sc.install(make(chargingProfileId=30, stackLevel=8)))
        self.assertEqual(len(sc.profiles), smart.MAX_PROFILES)

    def test_profiles_survive_a_reset(self):
        sc = self.rig()
        again = SmartCharging(sc.store)
        self.assertEqual(again.profiles, sc.profiles)
        self.assertEqual(composite(again.profiles, MON, None, None, 3)[0],
                         composite(sc.profiles, MON, None, None, 3)[0])


class _Log:
    def __init__(self):
        self.running = None
        self.tx_id = None

    def running_tx_id(self):
        return self.tx_id


class _Charger:
    def ceiling_ma(self):
        return 32000


class _Ops:
    def __init__(self):
        self.limits = []
        self.charger = _Charger()

    def set_limit(self, ma, now):
        self.limits.append((now, ma))

    def start(self, tag, now):
        self.started = tag
        return 0


class _Backend:
    """The parts of Ocpp16Backend the profiles use; the wall clock follows the ticks from
    `wall0` (seconds since 1970) at tick 0, in whole seconds as a board's RTC gives it."""

    def __init__(self, wall0, store=None):
        self.wall0 = wall0
        self.cfg = Config({"phases": 3, "max_current_ma": 32000})
        self.ops = _Ops()
        self.log = _Log()
        self.store = store or Store("/sc", RamFs())
        self.smart = None
        self.clock_reads = 0

    def in_transaction(self):
        return self.log.running is not None

    def time(self, now):
        self.clock_reads += 1
        return self.wall0 + now // 1000

    def smart_charging(self):
        if self.smart is None:
            self.smart = SmartCharging(self.store)
        return self.smart


def iso(t2020):
    from firmware.ocpp16 import clock
    return clock.iso(t2020 + EPOCH_2020)


class Step(unittest.TestCase):
    def test_the_limit_follows_in_the_first_tick_of_the_periods_second(self):
        # The station's clock 08:00:00.000 at tick 0; set at 08:00:00.345, a profile whose
        # second period (10 A) starts at 08:00:05, its third (12 A) at 08:01:05.
        b = _Backend(MON + EPOCH_2020 + 8 * 3600)
        t0 = MON + 8 * 3600
        out = router.dispatch(b, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles":
                              period({}, [(0, 16), (5, 10), (65, 12)], iso(t0))}, 345)
        self.assertEqual(out, {"status": "Accepted"})
        self.assertFalse("set_charging_profile" in router.resident())
        reads = {}
        for now in range(350, 70000, 10):
            b.smart.step(b, now)
            reads[now] = b.clock_reads
        self.assertEqual(b.ops.limits, [(350, 16000), (5000, 10000), (65000, 12000)])
        self.assertEqual(b.smart.recomputes, 3)
        # Quiet ticks do not read the clock. Before the first change its last second is
        # read tick by tick; that change shows when a second begins, so the next one is
        # reckoned in ticks and read only in its last _GUARD_MS.
        self.assertEqual(reads[4340] - reads[350], 0)
        self.assertTrue(60 <= reads[5000] - reads[4340] <= 70, reads[5000] - reads[4340])
        self.assertEqual(reads[64900] - reads[5000], 0)
        self.assertTrue(reads[65000] - reads[64900] <= 6, reads[65000] - reads[64900])

    def test_a_clock_set_meanwhile_is_not_trusted_to_the_old_edge(self):
        b = _Backend(MON + EPOCH_2020 + 8 * 3600)
        t0 = MON + 8 * 3600
        router.dispatch(b, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles":
                        period({}, [(0, 16), (5, 10), (20, 12)], iso(t0))}, 0)
        for now in range(0, 6000, 10):
            b.smart.step(b, now)
        self.assertTrue(b.smart._edge is not None)
        b.wall0 += 3                  # the central system's time: 3 s later than thought
        b.smart.changed()
        for now in range(6000, 20000, 10):
            b.smart.step(b, now)
        self.assertEqual(b.ops.limits, [(0, 16000), (5000, 10000), (17000, 12000)])
        self.assertEqual(b.smart._edge[0], 17000)

    def test_quiet_ticks_allocate_nothing(self):
        if not HEAP_LOCK:
            raise unittest.SkipTest("needs micropython.heap_lock (unix port)")
        b = _Backend(MON + EPOCH_2020)
        sc = b.smart_charging()
        sc.install(make(periods=[(0, 16), (3600, 10)]))
        sc.step(b, 0)
        micropython.heap_lock()
        try:
            for now in range(10, 60000, 10):
                sc.step(b, now)       # as Ocpp16Backend.step calls it, idle() included
                sc.idle()
        finally:
            micropython.heap_unlock()
        self.assertEqual(b.ops.limits, [(0, 16000)])

    def test_transaction_end_removes_tx_profiles_and_lifts_their_limit(self):
        b = _Backend(MON + EPOCH_2020)
        b.log.running = [1, "TAG", 0, MON + EPOCH_2020, 0]
        b.log.tx_id = 42
        out = router.dispatch(b, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles":
                              period({"chargingProfilePurpose": "TxProfile"}, [(0, 10)])}, 0)
        self.assertEqual(out, {"status": "Accepted"})
        b.smart.step(b, 10)
        self.assertEqual(b.ops.limits, [(10, 10000)])
        b.log.running = None
        b.log.tx_id = None
        b.smart.transaction_ended()
        b.smart.step(b, 20)
        self.assertEqual(b.ops.limits, [(10, 10000), (20, None)])
        self.assertEqual(b.smart.profiles, [])

    def test_remote_start_brings_a_tx_profile_for_its_transaction(self):
        b = _Backend(MON + EPOCH_2020)
        bad = period({"chargingProfilePurpose": "TxProfile", "transactionId": 3}, [(0, 10)])
        out = router.dispatch(b, "RemoteStartTransaction", {"idTag": "R1",
                                                            "chargingProfile": bad}, 0)
        self.assertEqual(out, {"status": "Rejected"})
        self.assertIsNone(b.smart)
        good = period({"chargingProfilePurpose": "TxProfile"}, [(0, 10)])
        out = router.dispatch(b, "RemoteStartTransaction", {"idTag": "R1",
                                                            "chargingProfile": good}, 0)
        self.assertEqual(out, {"status": "Accepted"})
        self.assertFalse("set_charging_profile" in router.resident())
        b.smart.step(b, 10)
        self.assertEqual(b.ops.limits, [(10, None)])      # not before its transaction
        b.log.running = [1, "R1", 0, MON + EPOCH_2020, 0]
        b.log.tx_id = 5
        b.smart.changed()
        b.smart.step(b, 20)
        self.assertEqual(b.ops.limits, [(10, None), (20, 10000)])

    def test_set_profile_rejections(self):
        b = _Backend(MON + EPOCH_2020)

        def send(conn, **p):
            return router.dispatch(b, "SetChargingProfile", {
                "connectorId": conn, "csChargingProfiles": period(p, [(0, 10)])}, 0)["status"]
        self.assertEqual(send(1, chargingProfilePurpose="TxProfile"), "Rejected")   # no tx
        self.assertEqual(send(1, chargingProfilePurpose="ChargePointMaxProfile"), "Rejected")
        self.assertEqual(send(2), "Rejected")
        b.log.running = [1, "TAG", 0, MON + EPOCH_2020, 0]
        b.log.tx_id = 42
        self.assertEqual(send(1, chargingProfilePurpose="TxProfile", transactionId=41),
                         "Rejected")
        self.assertEqual(send(0, chargingProfilePurpose="TxProfile"), "Rejected")
        self.assertEqual(send(1, chargingProfilePurpose="TxProfile", transactionId=42),
                         "Accepted")
        self.assertEqual(send(0, chargingProfilePurpose="ChargePointMaxProfile",
                              chargingProfileId=2), "Accepted")
        self.assertEqual(b.smart.profiles[0][6], 42)
        out = router.dispatch(b, "ClearChargingProfile", {"id": 5}, 0)
        self.assertEqual(out, {"status": "Unknown"})
        out = router.dispatch(b, "ClearChargingProfile",
                              {"chargingProfilePurpose": "ChargePointMaxProfile"}, 0)
        self.assertEqual(out, {"status": "Accepted"})
        self.assertEqual([p[3] for p in b.smart.profiles], [TX])


class ClockWatch(unittest.TestCase):
    """The clock set (NTP, the central system's time) is noticed within a second."""

    def test_the_clock_running_with_the_ticks_is_no_jump(self):
        w = clock.Watch()
        t0 = MON + EPOCH_2020
        seen = []
        for now in range(0, 7300000, 10):
            if w.due(now):
                seen.append(w.jumped(t0 + (now + 370) // 1000, now))
        self.assertEqual(len(seen), 7300)      # once a second, not per iteration
        self.assertFalse(any(seen))

    def test_set_forward_back_or_from_nothing(self):
        w = clock.Watch()
        t0 = MON + EPOCH_2020
        self.assertFalse(w.jumped(0, 0))       # no clock yet
        self.assertTrue(w.jumped(t0, 1000))    # NTP: the time is known
        self.assertFalse(w.jumped(t0 + 1, 2000))
        self.assertTrue(w.jumped(t0 + 3602, 3000))
        self.assertFalse(w.jumped(t0 + 3603, 4000))
        self.assertTrue(w.jumped(t0 + 3000, 5000))


class CompositeSchedule(unittest.TestCase):
    def test_periods_in_amperes_and_watts_with_the_local_limit(self):
        b = _Backend(MON + EPOCH_2020 + 8 * 3600)
        sc = b.smart_charging()
        sc.install(make(conn=0, chargingProfilePurpose="ChargePointMaxProfile",
                        periods=[(0, 40)]))
        sc.install(make(chargingProfileId=2, start="2026-01-05T08:10:00Z",
                        periods=[(0, 10), (600, 6), (1200, 20)], duration=1800))
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 1, "duration": 3600}, 0)
        self.assertEqual(out["status"], "Accepted")
        self.assertEqual(out["scheduleStart"], "2026-01-05T08:00:00Z")
        s = out["chargingSchedule"]
        self.assertEqual((s["duration"], s["chargingRateUnit"]), (3600, "A"))
        # The local maximum (32 A) where no profile limits less.
        self.assertEqual([(q["startPeriod"], q["limit"]) for q in s["chargingSchedulePeriod"]],
                         [(0, 32.0), (600, 10.0), (1200, 6.0), (1800, 20.0), (2400, 32.0)])
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 0, "duration": 900,
                                                          "chargingRateUnit": "W"}, 0)
        self.assertEqual([(q["startPeriod"], q["limit"])
                          for q in out["chargingSchedule"]["chargingSchedulePeriod"]],
                         [(0, 22080.0)])
        self.assertFalse("get_composite_schedule" in router.resident())

    def test_without_a_profile_the_local_limit_and_no_module_loaded(self):
        import sys
        sys.modules.pop("firmware.ocpp16.smart", None)
        b = _Backend(MON + EPOCH_2020)
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 1, "duration": 60}, 0)
        self.assertEqual(out["chargingSchedule"]["chargingSchedulePeriod"],
                         [{"startPeriod": 0, "limit": 32.0}])
        out = router.dispatch(b, "ClearChargingProfile", {"stackLevel": 0}, 0)
        self.assertEqual(out, {"status": "Unknown"})
        self.assertFalse("firmware.ocpp16.smart" in sys.modules)
        sys.modules["firmware.ocpp16.smart"] = smart

    def test_watts_over_each_periods_phases(self):
        b = _Backend(MON + EPOCH_2020)
        sc = b.smart_charging()
        sc.install(make(periods=[(0, 16, 1), (600, 16)], duration=1200))
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 1, "duration": 1800,
                                                          "chargingRateUnit": "W"}, 0)
        self.assertEqual([(q["startPeriod"], q["limit"])
                          for q in out["chargingSchedule"]["chargingSchedulePeriod"]],
                         [(0, 3680.0), (600, 11040.0), (1200, 22080.0)])

    def test_rejected_without_a_clock_or_for_another_connector(self):
        b = _Backend(0)         # time(now) == 0: neither an RTC nor the central system's
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 1, "duration": 60}, 0)
        self.assertEqual(out, {"status": "Rejected"})
        b = _Backend(MON + EPOCH_2020)
        out = router.dispatch(b, "GetCompositeSchedule", {"connectorId": 2, "duration": 60}, 0)
        self.assertEqual(out, {"status": "Rejected"})


if __name__ == "__main__":
    unittest.main()
