# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Scripted sessions in simulated time, read like the standard's sequences.
import json
import unittest

from firmware.compat import TICKS_MAX, ticks_add
from firmware.config import Config
from firmware.counters import Counters
from firmware.session import CKPT_FILE, JOURNAL_FILE, LIVE_FILE, SessionError, SessionManager
from firmware.states import STATE_A, STATE_B1, STATE_B2, STATE_C1, STATE_C2, STATE_F
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs

ROOT = "/data"
MIN = 60000
HOUR = 3600000


class Station:
    """Session manager, counters and storage on a power-cut filesystem, with a simulated clock
    and a simulated meter whose register integrates the power while the contactor is closed."""

    def __init__(self, fs=None, cfg=None, wall=None, register=100000, t0=1000, has_register=True):
        self.fs = fs or PowerCutFs()
        self.cfg = Config(cfg or {})
        self.wall = wall                  # None, or wall seconds at t == t0
        self.t0 = t0
        self.t = t0
        self.register_base = register
        self.energy_wms = 0
        self.power_w = 0
        self.new_segment = False
        self.boot()
        if has_register:
            self.sm.on_meter(self.t, self.register, 0, True)   # the meter answers at boot

    def boot(self):
        self.store = Store(ROOT, self.fs)
        self.counters = Counters.from_config(self.cfg, self.store)
        self.boot_id = self.counters.boot(self.t)
        self.sm = SessionManager(self.cfg, self.store, self.counters, self.boot_id,
                                 wall_time=self.wall_now)

    def reset(self, t_off_ms=0):
        """Power lost: restart on the files as they were left."""
        self.fs = self.fs.restart()
        self.t = ticks_add(self.t, t_off_ms)
        self.power_w = 0
        self.boot()

    def wall_now(self):
        if self.wall is None:
            return None
        return self.wall + (self.t - self.t0) // 1000

    @property
    def register(self):
        return self.register_base + self.energy_wms // 3600000

    def run(self, ms, step=1000, meter=True, valid=True):
        """Advance `ms`, reading the meter every `step` and ticking the manager."""
        end = self.t + ms
        while self.t < end:
            self.t += step
            self.energy_wms += self.power_w * step
            if meter:
                base = None
                if valid and self.new_segment:
                    base = self.register          # MeterService.base_wh
                    self.new_segment = False
                self.sm.on_meter(self.t & TICKS_MAX, self.register if valid else None,
                                 self.power_w if valid else None, valid, base)
            self.sm.tick(self.t & TICKS_MAX)

    def state(self, st):
        self.sm.on_state(self.t & TICKS_MAX, st)

    def contactor(self, closed, power_w=0, reason=None):
        self.sm.on_contactor(self.t & TICKS_MAX, closed, reason)
        self.power_w = power_w if closed else 0

    def start_charging(self, power_w):
        self.state(STATE_C2)
        self.contactor(True, power_w)

    def live_writes(self):
        return sum(1 for op in self.fs.log if op.startswith("rename") and op.endswith("/" + LIVE_FILE))

    def checkpoint_writes(self):
        """Writes of the live session, full (session.live) or small (session.ckpt)."""
        return sum(1 for op in self.fs.log if op.startswith("rename")
                   and (op.endswith("/" + LIVE_FILE) or op.endswith("/" + CKPT_FILE)))


class ScriptedSessions(unittest.TestCase):
    def test_plug_authorize_charge_idle_unplug(self):
        st = Station(cfg={"tariff_id": "day", "price_per_kwh_minor": 30,
                          "price_per_min_charging_minor": 1, "price_per_min_idle_minor": 10,
                          "idle_grace_min": 15, "session_fee_minor": 50})
        st.state(STATE_B1)                           # EV plugged in
        self.assertIsNotNone(st.sm.active)
        st.run(2 * MIN)                              # waiting for authorization (station's wait)
        st.sm.set_id_tag("04A1B2C3", st.t, "local_list")
        st.state(STATE_B2)                           # PWM on
        st.run(30000)                                # EV not yet asking
        st.start_charging(11000)
        st.run(HOUR)                                 # 11 kWh
        st.state(STATE_B2)                           # EV full
        st.contactor(False)
        st.run(45 * MIN)                             # left plugged in: 30 min billable idle
        st.state(STATE_A)
        self.assertIsNone(st.sm.active)
        recs = st.sm.pop_completed()
        self.assertEqual(len(recs), 1)
        r = recs[0]
        self.assertEqual(r["id"], "1-1")
        self.assertEqual((r["station_id"], r["connector_id"]), ("cp-0001", 1))
        self.assertEqual((r["id_tag"], r["auth"]), ("04A1B2C3", "local_list"))
        self.assertEqual(r["stop_reason"], "ev_unplugged")
        self.assertEqual(r["energy_wh"], 11000)
        self.assertEqual((r["meter_start_wh"], r["meter_stop_wh"]), (100000, 111000))
        self.assertEqual(r["peak_power_w"], 11000)
        self.assertEqual(r["charging_s"], 3600)
        self.assertEqual(r["idle_s"], 120 + 30 + 45 * 60)
        self.assertEqual(r["suspended_s"], 120)      # only the wait for authorization (B1)
        self.assertEqual(r["duration_s"], 120 + 30 + 3600 + 45 * 60)
        # 11 kWh * 30 + 60 min * 1 + (45.5 min - 15 min grace) * 10 + 50
        self.assertEqual(r["cost"], {"energy_minor": 330, "charging_minor": 60, "idle_minor": 305,
                                     "fee_minor": 50, "idle_billed_s": 30 * 60 + 30})
        self.assertEqual(r["cost_minor"], 330 + 60 + 305 + 50)
        self.assertEqual((r["tariff_id"], r["currency"]), ("day", "EUR"))
        self.assertEqual(r["meter_flags"]["energy_source"], "register")
        self.assertEqual(r["time_source"], "monotonic")
        self.assertEqual(r["boot"], 1)
        self.assertEqual(r["stop_time"] - r["start_time"], r["duration_s"] * 1000)
        self.assertEqual(json.loads(json.dumps(r)), r)   # plain JSON, integers only
        self.assertEqual(st.sm.pop_completed(), [])
        self.assertEqual(st.counters.sessions, 1)
        self.assertEqual(st.counters.energy_wh, 11000)
        self.assertEqual(st.counters.contactor_cycles_under_load, 1)

    def test_billed_idle_time_is_what_the_record_reports(self):
        # The backend re-rates from idle_s - suspended_s (docs/sessions.md): the station's
        # own price must come from the same seconds, also when the parts are not whole.
        st = Station(cfg={"price_per_min_idle_minor": 60000})    # 1000 minor units a second
        st.state(STATE_B1)                           # station withholds current: 0.6 s
        st.run(600, step=100)
        st.state(STATE_B2)                           # EV not drawing: 0.9 s
        st.run(900, step=100)
        st.state(STATE_A)
        r = st.sm.pop_completed()[0]
        self.assertEqual(r["idle_s"], 1)
        self.assertEqual(r["cost"]["idle_billed_s"], r["idle_s"] - r["suspended_s"])
        self.assertEqual(r["cost"]["idle_minor"], 1000 * r["cost"]["idle_billed_s"])
        self.assertEqual(r["cost"]["idle_billed_s"], 0)    # 0.9 s billable, not a second

    def test_ev_pause_and_resume_is_one_session(self):
        st = Station()
        st.state(STATE_B2)
        for _ in range(3):                           # C -> B -> C three times
            st.start_charging(7000)
            st.run(20 * MIN)
            st.state(STATE_B2)
            st.contactor(False)
            st.run(10 * MIN)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["charging_s"], 3 * 20 * 60)
        self.assertEqual(r["idle_s"], 3 * 10 * 60)
        self.assertEqual(r["suspended_s"], 0)
        self.assertEqual(r["energy_wh"], 7000)
        self.assertEqual(st.counters.contactor_cycles, 3)

    def test_backend_pause_is_not_billed_as_idle_and_resume_clears_the_stop(self):
        st = Station(cfg={"price_per_min_idle_minor": 100})
        st.sm.set_id_tag("TAG", st.t, "backend")
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(10 * MIN)
        st.sm.stop_reason("remote_stop")             # backend stop: PWM off, EV goes C1
        st.state(STATE_C1)
        st.contactor(False)
        st.run(20 * MIN)
        st.state(STATE_C2)                           # backend start again
        st.contactor(True, 3600)
        st.run(10 * MIN)
        st.state(STATE_B1)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "ev_unplugged")
        self.assertEqual(r["charging_s"], 20 * 60)
        self.assertEqual((r["idle_s"], r["suspended_s"]), (20 * 60, 20 * 60))
        self.assertEqual(r["cost"]["idle_minor"], 0)
        self.assertEqual(r["energy_wh"], 1200)

    def test_idle_grace_covers_the_sum_of_idle_periods(self):
        st = Station(cfg={"price_per_min_idle_minor": 10, "idle_grace_min": 15,
                          "price_per_kwh_minor": 20})
        st.state(STATE_B2)
        st.run(10 * MIN)                             # EV idles before it asks for current
        st.start_charging(6000)
        st.run(30 * MIN)
        st.state(STATE_B2)
        st.contactor(False)
        st.run(12 * MIN)                             # EV pauses
        st.start_charging(6000)
        st.run(30 * MIN)
        st.state(STATE_B2)
        st.contactor(False)
        st.run(8 * MIN)                              # full, still plugged in
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual((r["idle_s"], r["suspended_s"], r["charging_s"]), (30 * 60, 0, 3600))
        self.assertEqual(r["cost"]["idle_billed_s"], 15 * 60)
        self.assertEqual(r["cost"], {"energy_minor": 120, "charging_minor": 0, "idle_minor": 150,
                                     "fee_minor": 0, "idle_billed_s": 900})
        self.assertEqual(r["cost_minor"], 270)

    def test_repeated_state_reports_change_nothing(self):
        st = Station()
        for _ in range(5):
            st.state(STATE_B2)
        st.start_charging(6000)
        for _ in range(5):
            st.state(STATE_C2)
            st.contactor(True, 6000)
        st.run(MIN)
        for _ in range(3):
            st.contactor(False)
            st.state(STATE_A)
        self.assertEqual(len(st.sm.pop_completed()), 1)
        self.assertEqual(st.counters.contactor_cycles, 1)

    def test_remote_stop_then_unplug_records_the_remote_stop(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7000)
        st.run(MIN)
        st.sm.stop_reason("remote_stop")
        st.state(STATE_C1)
        st.contactor(False)
        st.run(MIN)
        st.state(STATE_A)
        self.assertEqual(st.sm.pop_completed()[0]["stop_reason"], "remote_stop")
        self.assertRaises(SessionError, st.sm.stop_reason, "")

    def test_fault_ends_as_fault_and_lists_its_name(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7000)
        st.run(MIN)
        st.sm.on_fault(st.t, "rcd_dc")
        st.contactor(False, reason="fault:rcd_dc")        # the fault opened the contactor
        st.state(STATE_F)
        st.run(MIN)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "fault:rcd_dc")
        self.assertEqual(r["faults"], ["rcd_dc"])
        self.assertEqual(st.counters.faults, {"rcd_dc": 1})

    def test_fault_that_clears_and_charging_resumes(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7000)
        st.sm.on_fault(st.t, "overtemp")
        st.contactor(False)
        st.run(MIN)
        st.contactor(True, 7000)
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual((r["stop_reason"], r["faults"]), ("ev_unplugged", ["overtemp"]))

    def test_authorized_before_plug_in(self):
        st = Station(register=500)
        st.sm.set_id_tag("CARD", st.t, "backend")
        sid = st.sm.active["id"]
        st.run(30000)
        st.state(STATE_B2)
        self.assertEqual(st.sm.active["id"], sid)
        st.start_charging(3600)
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual((r["id"], r["id_tag"], r["energy_wh"]), (sid, "CARD", 60))
        self.assertEqual(r["duration_s"], 90)
        self.assertEqual(r["idle_s"] + r["charging_s"], 60)   # time before plug-in is neither

    def test_authorization_expires_without_plug_in(self):
        st = Station()
        st.sm.set_id_tag("CARD", st.t)
        st.run(MIN)
        r = st.sm.end(st.t, "auth_timeout")
        self.assertEqual((r["stop_reason"], r["energy_wh"], r["cost_minor"]), ("auth_timeout", 0, 0))
        self.assertIsNone(st.sm.active)
        self.assertIsNone(st.sm.end(st.t, "auth_timeout"))

    def test_operator_end_while_plugged_waits_for_unplug(self):
        st = Station()
        st.state(STATE_B2)
        st.sm.end(st.t, "local_stop")
        st.state(STATE_B1)
        st.state(STATE_B2)
        self.assertIsNone(st.sm.active)
        st.state(STATE_A)
        st.state(STATE_B1)
        self.assertIsNotNone(st.sm.active)

    def test_live_view_shows_energy_and_cost_so_far(self):
        st = Station(cfg={"price_per_kwh_minor": 40})
        st.state(STATE_B2)
        st.start_charging(6000)
        st.run(30 * MIN)
        a = st.sm.active
        self.assertEqual((a["energy_wh"], a["cost_minor"], a["charging_s"]), (3000, 120, 1800))
        self.assertIsNone(a["stop_time"])
        self.assertIsNone(a["stop_reason"])

    def test_tariff_is_fixed_at_session_start(self):
        st = Station(cfg={"price_per_kwh_minor": 10})
        st.state(STATE_B2)
        st.start_charging(1000)
        st.run(HOUR)
        st.cfg.set("price_per_kwh_minor", 99)
        st.contactor(False)
        st.state(STATE_A)
        self.assertEqual(st.sm.pop_completed()[0]["cost_minor"], 10)

    def test_session_across_the_ticks_wrap(self):
        st = Station(t0=TICKS_MAX - 5 * MIN)
        st.state(STATE_B2)
        st.start_charging(6000)
        st.run(10 * MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual((r["charging_s"], r["energy_wh"]), (600, 1000))


class Clock(unittest.TestCase):
    def test_wall_time_when_the_board_has_it(self):
        st = Station(wall=1764230400)
        st.state(STATE_B2)
        st.run(MIN)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["time_source"], "wall")
        self.assertEqual((r["start_time"], r["stop_time"]), (1764230400, 1764230460))

    def test_clock_set_during_the_session_dates_the_start_back(self):
        st = Station()
        st.state(STATE_B2)
        st.run(5 * MIN)
        st.wall = 1764230400 - (st.t - st.t0) // 1000   # NTP answers now
        st.run(MIN)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["time_source"], "wall")
        self.assertEqual(r["stop_time"] - r["start_time"], 360)
        self.assertEqual(r["start_time"], 1764230400 - 300)


class Meter(unittest.TestCase):
    def test_stale_readings_are_counted_and_energy_is_kept(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN)
        st.run(MIN, valid=False)                     # meter silent for a minute
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["energy_wh"], 180)         # the register covers the gap
        self.assertEqual(r["meter_flags"]["stale"], 60)

    def test_readings_the_meter_service_rejects_are_counted_not_used(self):
        # The meter service judges plausibility (tests/unit/test_meter_service.py); the
        # session counts what it rejected (a jump, and one going backwards).
        st = Station()
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN)
        st.sm.on_rejected(st.t)
        st.run(MIN)
        st.sm.on_rejected(st.t)
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["energy_wh"], 180)
        self.assertEqual((r["meter_flags"]["implausible"], r["meter_flags"]["rebased"]), (2, 0))

    def test_faults_present_at_the_start_are_listed_not_taken_as_the_stop(self):
        st = Station()
        st.sm.on_fault(st.t, "METER_STALE")          # raised while no session ran
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        st.sm.on_fault_cleared(st.t, "METER_STALE")
        st.state(STATE_B2)
        st.state(STATE_A)
        first, second = st.sm.pop_completed()
        self.assertEqual(first["faults"], ["METER_STALE"])
        self.assertEqual(first["stop_reason"], "ev_unplugged")
        self.assertEqual(second["faults"], [])

    def test_replaced_meter_rebases_and_keeps_earlier_energy(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN)                                   # 60 Wh on the old meter
        st.register_base = 5000 - st.energy_wms // 3600000   # new meter, register at 5 kWh
        st.new_segment = True                         # the meter service reports it
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["meter_flags"]["rebased"], 1)
        self.assertEqual(r["energy_wh"], 60 + 59)     # one poll interval is unknowable
        self.assertEqual(r["meter_stop_wh"], 5060)

    def test_register_first_read_while_charging_is_flagged(self):
        st = Station()
        st.reset()                                    # no reading since boot
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertTrue(r["meter_flags"]["late_register"])
        self.assertEqual(r["energy_wh"], 59)

    def test_no_meter_at_all(self):
        st = Station(has_register=False)
        st.state(STATE_B2)
        st.start_charging(3600)
        st.run(MIN, meter=False)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertIsNone(r["energy_wh"])
        self.assertIsNone(r["meter_start_wh"])
        self.assertEqual(r["meter_flags"]["energy_source"], "none")
        self.assertEqual(r["charging_s"], 60)

    def test_power_only_meter_is_integrated(self):
        st = Station(has_register=False)
        st.state(STATE_B2)
        st.start_charging(7200)
        for _ in range(600):
            st.t += 1000
            st.sm.on_meter(st.t, None, 7200, True)
        st.contactor(False)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["meter_flags"]["energy_source"], "power")
        self.assertEqual(r["energy_wh"], 7200 * 599 // 3600)   # first reading opens the integral


class Delivery(unittest.TestCase):
    def _session(self, st, minutes=1):
        st.state(STATE_B2)
        st.start_charging(6000)
        st.run(minutes * MIN)
        st.contactor(False)
        st.state(STATE_A)

    def test_ids_are_unique_across_reboots(self):
        st = Station()
        self._session(st)
        self._session(st)
        st.reset()
        self._session(st)
        ids = [r["id"] for r in st.sm.pending()]
        self.assertEqual(ids, ["1-1", "1-2", "2-1"])

    def test_records_wait_for_the_backend_ack_across_reboots(self):
        st = Station()
        self._session(st)
        self._session(st)
        first = st.sm.pop_completed()
        self.assertEqual([r["id"] for r in first], ["1-1", "1-2"])
        self.assertTrue(st.sm.acknowledged("1-1"))
        self.assertFalse(st.sm.acknowledged("1-1"))
        self.assertFalse(st.sm.acknowledged("9-9"))
        st.reset()
        self.assertEqual(st.sm.pop_completed(limit=0), [])
        again = st.sm.pop_completed(limit=1)
        self.assertEqual(st.sm.pop_completed(limit=1), [])
        self.assertEqual(again, [first[1]])           # offered again, identical
        st.sm.redeliver()
        self.assertEqual(st.sm.pop_completed(), [first[1]])
        self.assertTrue(st.sm.acknowledged("1-2"))
        self.assertEqual(st.sm.pending(), [])
        st.reset()
        self.assertEqual(st.sm.pop_completed(), [])
        self.assertTrue(st.store.size(JOURNAL_FILE) <= 8)   # compacted to its commit frame

    def test_an_outbox_that_does_not_poll_cannot_fill_the_heap(self):
        st = Station()
        for _ in range(10):
            self._session(st)
        self.assertTrue(len(st.sm._fresh) <= 4)
        got = st.sm.pop_completed(limit=3) + st.sm.pop_completed()
        self.assertEqual([r["id"] for r in got], ["1-%d" % i for i in range(1, 11)])
        self.assertEqual(got, st.sm.pending())

    def test_journal_stays_bounded_while_the_backend_acks(self):
        st = Station()
        sizes = []
        for _ in range(30):
            self._session(st)
            self._session(st)
            a, b = st.sm.pop_completed()
            st.sm.acknowledged(a["id"])               # every second record stays pending
            sizes.append(st.store.size(JOURNAL_FILE))
        self.assertEqual(len(st.sm.pending()), 30)
        per_record = sizes[0] // 2
        self.assertTrue(max(sizes) < 2 * 30 * per_record + 8192)
        compactions = sum(1 for op in st.fs.log if op.startswith("rename") and JOURNAL_FILE in op)
        self.assertTrue(1 <= compactions <= 6)       # not one per acknowledgement
        for r in st.sm.pending():
            st.sm.acknowledged(r["id"])
        self.assertEqual(st.sm.pending(), [])
        self.assertTrue(st.store.size(JOURNAL_FILE) <= 8)
        st.reset()
        self.assertEqual(st.sm.pending(), [])

    def test_checkpoints_are_rate_limited(self):
        # docs/sessions.md "Flash wear": one small record per session_checkpoint_s (10 s),
        # the full session.live every 10 minutes, whatever the power.
        st = Station()
        st.state(STATE_B2)
        st.start_charging(3600)                       # 1 Wh/s: the 100 Wh step every 100 s
        writes0, full0 = st.checkpoint_writes(), st.live_writes()
        st.run(20 * MIN, step=100)                    # tick every 100 ms
        self.assertEqual(st.checkpoint_writes() - writes0, 120)   # the 10 s limit first
        self.assertEqual(st.live_writes() - full0, 2)
        st.contactor(True, 22000)                     # 22 kW: 100 Wh every 16.4 s
        writes0 = st.checkpoint_writes()
        st.run(10 * MIN, step=100)
        self.assertEqual(st.checkpoint_writes() - writes0, 60)
        st.contactor(False)
        writes0 = st.checkpoint_writes()
        st.run(10 * MIN, step=100)                    # idle: the same, no more
        self.assertEqual(st.checkpoint_writes() - writes0, 60)
        cfg = Config({"session_checkpoint_s": 60, "session_checkpoint_wh": 100})
        st = Station(cfg={"session_checkpoint_s": 60})
        st.state(STATE_B2)
        st.start_charging(22000)
        writes0 = st.checkpoint_writes()
        st.run(10 * MIN, step=100)                    # 60 s: the energy step comes first
        self.assertEqual(st.checkpoint_writes() - writes0, 36)
        self.assertTrue(cfg["session_checkpoint_s"] == 60)


class PowerLoss(unittest.TestCase):
    def test_live_session_is_closed_as_power_loss_with_late_energy(self):
        st = Station(cfg={"session_checkpoint_s": 60})
        st.sm.set_id_tag("CARD", st.t, "local_list")
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(10 * MIN + 30000)                      # last checkpoint at 10 min
        reg_at_cut = st.register
        st.reset(t_off_ms=5 * MIN)
        self.assertIsNotNone(st.store.read(LIVE_FILE))
        r = st.sm.recover(st.t, reg_at_cut)
        self.assertEqual(r["stop_reason"], "power_loss")
        self.assertEqual(r["id"], "1-1")
        self.assertEqual(r["id_tag"], "CARD")
        self.assertEqual(r["energy_wh"], reg_at_cut - 100000)
        self.assertEqual(r["meter_flags"]["recovered_wh"], 60)
        self.assertEqual(r["charging_s"], 600)         # as of the checkpoint
        self.assertIsNone(st.store.read(LIVE_FILE))
        self.assertEqual([x["id"] for x in st.sm.pop_completed()], ["1-1"])
        self.assertEqual((st.counters.sessions, st.counters.energy_wh), (1, r["energy_wh"]))
        self.assertIsNone(st.sm.recover(st.t, reg_at_cut))

    def test_the_id_tag_survives_a_cut_right_after_authorization(self):
        for auth_first in (True, False):
            st = Station()
            if auth_first:
                st.sm.set_id_tag("CARD-9", st.t, "backend")
                st.state(STATE_B2)
            else:
                st.state(STATE_B2)
                st.run(5000)
                st.sm.set_id_tag("CARD-9", st.t, "backend")
            writes = st.live_writes()
            st.sm.set_id_tag("CARD-9", st.t, "backend")   # repeated: no extra write
            self.assertEqual(st.live_writes(), writes)
            st.reset()
            r = st.sm.recover(st.t, st.register)
            self.assertEqual((r["id_tag"], r["auth"]), ("CARD-9", "backend"))

    def test_implausible_register_at_boot_is_not_billed(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(2 * MIN + 5000)
        ck = json.loads(st.store.read(CKPT_FILE))       # [.., seg_base, seg_last, ..]
        at_ckpt = ck[8] - ck[7]
        self.assertTrue(0 < at_ckpt < st.sm.active["energy_wh"])
        st.reset()
        r = st.sm.recover(st.t, st.register + 50000)
        self.assertEqual(r["energy_wh"], at_ckpt)
        self.assertEqual(r["meter_flags"]["implausible"], 1)

    def test_first_meter_reading_after_boot_recovers(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(90000)
        st.reset()
        st.run(1000)                                   # the meter answers
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["energy_wh"], 180)
        self.assertEqual(r["stop_reason"], "power_loss")

    def test_new_plug_in_recovers_first_without_a_meter(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(90000, meter=False)
        st.reset()
        st.state(STATE_B2)                             # EV still plugged: a new session
        self.assertEqual(st.sm.active["id"], "2-1")
        (r,) = st.sm.pop_completed()
        # As of the last checkpoint: within session_checkpoint_s (10 s) of the 90 s.
        self.assertEqual((r["id"], r["stop_reason"], r["charging_s"]), ("1-1", "power_loss", 90))


class ControlLoopCost(unittest.TestCase):
    def test_tick_between_checkpoints_allocates_nothing(self):
        try:
            import micropython
            micropython.heap_lock
        except (ImportError, AttributeError):
            raise unittest.SkipTest("heap_lock is only on the MicroPython port")
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7000)
        st.run(5000)
        t = st.t
        sm = st.sm
        micropython.heap_lock()
        try:
            for i in range(50):
                sm.tick(t + i * 100)
        finally:
            micropython.heap_unlock()

    def test_bad_id_tag_is_refused(self):
        st = Station()
        self.assertRaises(ValueError, st.sm.set_id_tag, "with space", st.t)
        self.assertRaises(ValueError, st.sm.set_id_tag, 42, st.t)
        self.assertIsNone(st.sm.active)


class OutOfMemoryAtTheEnd(unittest.TestCase):
    def test_a_record_that_cannot_be_journalled_for_lack_of_memory_is_kept_and_retried(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7000)
        st.run(10 * MIN)
        real = st.sm.journal.append_json
        failures = [1]

        def append_json(value):
            if failures:
                failures.pop()
                raise MemoryError("memory allocation failed")
            return real(value)
        st.sm.journal.append_json = append_json
        st.contactor(False)
        st.state(STATE_A)
        self.assertIsNone(st.sm.active)
        pending = st.sm.pending()
        self.assertEqual(len(pending), 1)
        self.assertIsNotNone(st.fs.medium.get(ROOT + "/" + LIVE_FILE))  # not on flash yet
        st.run(2000)                                    # tick() retries the journal
        self.assertIsNone(st.fs.medium.get(ROOT + "/" + LIVE_FILE))
        st.reset()
        self.assertEqual([r["id"] for r in st.sm.pending()], [pending[0]["id"]])
        self.assertEqual(st.sm.pending()[0]["stop_reason"], "ev_unplugged")


class StopReasonIsWhatStoppedTheCharge(unittest.TestCase):
    def charging(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(MIN)
        return st

    def test_a_warning_that_did_not_interrupt_charging_is_listed_not_the_reason(self):
        st = self.charging()
        st.sm.on_fault(st.t, "METER_STALE")
        st.sm.on_fault(st.t, "BACKEND_OFFLINE")
        st.run(MIN)
        st.contactor(False, reason="ev_stopped")          # the EV is full
        st.state(STATE_B2)
        st.run(MIN)
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "ev_stopped")
        self.assertEqual(r["faults"], ["METER_STALE", "BACKEND_OFFLINE"])

    def test_the_fault_that_opened_the_contactor_not_the_last_one_seen(self):
        st = self.charging()
        st.sm.on_fault(st.t, "RCD_TRIPPED")
        st.contactor(False, reason="fault:RCD_TRIPPED")
        st.state(STATE_F)
        st.run(MIN)
        st.sm.on_fault(st.t, "BACKEND_OFFLINE")
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "fault:RCD_TRIPPED")
        self.assertEqual(r["faults"], ["RCD_TRIPPED", "BACKEND_OFFLINE"])

    def test_a_requested_stop_wins_over_the_evs_reaction_to_it(self):
        st = self.charging()
        st.sm.stop_reason("remote_stop")                   # PWM off ...
        st.contactor(False, reason="ev_stopped")           # ... so the EV stops
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "remote_stop")

    def test_a_stop_after_the_ev_had_stopped_does_not_rewrite_it(self):
        st = self.charging()
        st.contactor(False, reason="ev_stopped")
        st.run(MIN)
        st.sm.stop_reason("remote_stop")
        r = st.sm.end(st.t, "reboot")
        self.assertEqual(r["stop_reason"], "ev_stopped")

    def test_charging_that_resumes_clears_the_pause(self):
        st = self.charging()
        st.sm.stop_reason("remote_stop")
        st.contactor(False, reason="ev_stopped")
        st.run(MIN)
        st.contactor(True, 7200)                           # resumed
        st.run(MIN)
        st.contactor(False, reason="ev_unplugged")
        st.state(STATE_A)
        (r,) = st.sm.pop_completed()
        self.assertEqual(r["stop_reason"], "ev_unplugged")

    def test_power_loss_while_charging_and_after_the_ev_had_stopped(self):
        st = self.charging()
        st.reset()
        self.assertEqual(st.sm.recover(st.t, st.register)["stop_reason"], "power_loss")
        st = self.charging()
        st.contactor(False, reason="ev_stopped")
        st.run(MIN)
        st.reset()
        self.assertEqual(st.sm.recover(st.t, st.register)["stop_reason"], "ev_stopped")


class PowerLossKeepsDurations(unittest.TestCase):
    def test_recovered_durations_are_right_to_within_one_checkpoint(self):
        for charge_ms in (12500, 95000, 25 * MIN + 7000):
            st = Station()
            st.state(STATE_B2)
            st.run(3000)
            st.start_charging(7200)
            st.run(charge_ms, step=500)
            st.reset()
            r = st.sm.recover(st.t, st.register)
            total_s = (3000 + charge_ms) // 1000
            self.assertTrue(total_s - 10 <= r["duration_s"] <= total_s, (charge_ms, r))
            self.assertTrue(charge_ms // 1000 - 10 <= r["charging_s"] <= charge_ms // 1000,
                            (charge_ms, r))
            self.assertTrue(r["duration_s"] > 0 and r["charging_s"] > 0)
            self.assertIsNone(st.store.read(CKPT_FILE))

    def test_the_small_checkpoint_is_small(self):
        # littlefs keeps files up to its cache size (128 bytes on MicroPython's ESP32 build,
        # the 12-byte header included) inline in the directory: no data block per write.
        st = Station(wall=1767600000, register=123456789)
        st.sm.set_id_tag("CARD", st.t, "local_list")
        st.state(STATE_B2)
        st.start_charging(22000)
        st.run(3 * HOUR, step=5000)
        self.assertTrue(st.store.size(CKPT_FILE) <= 128, st.store.size(CKPT_FILE))

    def test_a_small_checkpoint_of_another_session_or_older_is_ignored(self):
        st = Station()
        st.state(STATE_B2)
        st.start_charging(7200)
        st.run(95000)
        st.sm.set_id_tag("LATE", st.t, "backend")           # a full write, newer than ckpt
        st.reset()
        r = st.sm.recover(st.t, st.register)
        self.assertEqual((r["id_tag"], r["charging_s"]), ("LATE", 95))


class StartRecords(unittest.TestCase):
    def test_an_authorized_session_hands_out_a_start_record_once(self):
        st = Station(wall=1767600000)
        st.state(STATE_B2)
        self.assertEqual(st.sm.pop_started(), [])           # not authorized yet
        st.run(2000)
        st.sm.set_id_tag("04A2B3", st.t, "local_list")
        (s,) = st.sm.pop_started()
        self.assertEqual((s["id"], s["connector_id"], s["id_tag"], s["auth"]),
                         ("1-1", 1, "04A2B3", "local_list"))
        self.assertEqual((s["meter_start_wh"], s["time"], s["time_source"]),
                         (100000, 1767600000, "wall"))
        st.sm.start_delivered("1-1")
        self.assertEqual(st.sm.pop_started(), [])
        st.reset()                                          # delivered: not again
        self.assertEqual(st.sm.pop_started(), [])

    def test_a_start_record_not_yet_delivered_comes_back_after_a_reset(self):
        st = Station()
        st.sm.set_id_tag("CARD", st.t, "backend")
        st.state(STATE_B2)
        st.reset()
        (s,) = st.sm.pop_started()
        self.assertEqual((s["id"], s["id_tag"], s["time"]), ("1-1", "CARD", None))
        # The recovered session ends: its end record says it all, the start goes.
        st.sm.recover(st.t, st.register)
        self.assertEqual(st.sm.pop_started(), [])


class CheckpointJson(unittest.TestCase):
    # The full checkpoint is written field by field (_Session.dump_json), not built as a
    # dict of 40 fields first: what a reset reads back is still to_dict().
    def test_the_live_file_holds_to_dict(self):
        from firmware.session import _Session
        s = _Session()
        s.id = "s-7"
        s.faults = ["OVERCURRENT"]
        s.tariff = {"id": "t1", "price_minor": 30}
        s.reason = "ev_stopped"
        s.last_wall = 1764806400
        st = Store("/d", PowerCutFs())
        st.write_json(LIVE_FILE, s.dump_json)
        self.assertEqual(json.loads(st.read(LIVE_FILE)), s.to_dict())
        again = _Session.from_dict(json.loads(st.read(LIVE_FILE)))
        self.assertEqual(again.to_dict(), s.to_dict())
