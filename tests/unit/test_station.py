# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The whole station (charger, sessions, outbox, commands) on the simulator's board, in
# simulated time, with an in-memory flash that survives "resets".
import json
import sys
import unittest

from firmware import faults
from firmware.outbox import KIND_FAULT, KIND_SESSION
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

IS_MICROPYTHON = sys.implementation.name == "micropython"


def held_records(station, kind):
    return [r for r in station.outbox.records() if r.kind == kind]


# A backend address that nothing answers on (loopback, closed port): the link exists and
# records go to the outbox; no test here waits for a connection.
BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9}


class Rig:
    def __init__(self, fs=None, config=BACKEND, start_ms=0, board_class=SimBoard):
        self.fs = fs if fs is not None else PowerCutFs()
        self.board = board_class(start_ms=start_ms)
        self.station = Station(self.board, config=config, store=Store("/data", self.fs))

    def run(self, ms):
        for _ in range(ms // TICK_MS):
            self.station.step()
            self.board.sleep_ms(TICK_MS)

    def run_until(self, pred, limit_ms):
        """Steps until pred() holds; returns the simulated ms it took (None: never)."""
        t = 0
        while t <= limit_ms:
            if pred():
                return t
            self.station.step()
            self.board.sleep_ms(TICK_MS)
            t += TICK_MS
        return None

    def ev(self, plugged=None, s2=None):
        m = self.board.model
        if plugged is not None:
            m.plugged = plugged
        if s2 is not None:
            m.s2 = s2
        m.update()

    def reboot(self, config=BACKEND):
        self.fs.restart()
        return Rig(self.fs, config=config, start_ms=self.board.now_ms + 5000)


class ChargingSession(unittest.TestCase):
    def test_plug_charge_unplug_gives_one_record_in_the_outbox(self):
        r = Rig()
        st = r.station
        r.run(100)
        self.assertEqual(st.status()["state"], "A")
        r.ev(plugged=True)
        r.run(1000)
        self.assertEqual(st.status()["state"], "B2")    # free mode: current offered
        r.ev(s2=S2_C)
        took = r.run_until(lambda: r.board.contacts_closed, 3000)
        self.assertIsNotNone(took)                      # Annex A: closed within 3 s of C
        self.assertTrue(took < 3000)
        r.run(60000)
        self.assertTrue(r.board.contacts_closed)
        r.ev(plugged=False, s2=S2_OPEN)
        # The unplug is confirmed by a second reading in the same iteration and acted on
        # there: the first step after it opens the contactor (IEC 61851-1: within 100 ms).
        self.assertEqual(r.run_until(lambda: not r.board.contactor_cmd, 100), TICK_MS)
        r.run(200)
        held = held_records(st, KIND_SESSION)
        self.assertEqual(len(held), 1)
        rec = held[0].data
        self.assertEqual(rec["stop_reason"], "ev_unplugged")
        self.assertTrue(rec["charging_s"] >= 59)
        self.assertEqual(st.counters.sessions, 1)

    def test_unacknowledged_record_survives_a_reset_and_is_sent_once(self):
        r = Rig()
        r.run(50)
        r.ev(plugged=True)
        r.run(1000)
        r.ev(plugged=False)
        r.run(500)
        first = [x.id for x in held_records(r.station, KIND_SESSION)]
        self.assertEqual(len(first), 1)
        r2 = r.reboot()
        again = [x.id for x in held_records(r2.station, KIND_SESSION)]
        self.assertEqual(again, first)                  # held again, not duplicated
        r2.station.outbox.ack(first[0])
        r3 = r2.reboot()
        self.assertEqual(held_records(r3.station, KIND_SESSION), [])
        self.assertEqual(r3.station.sessions.pending(), [])

    def test_without_a_backend_records_wait_in_the_session_journal(self):
        r = Rig(config={})
        self.assertIsNone(r.station.link)
        r.run(50)
        r.ev(plugged=True)
        r.run(1000)
        r.ev(plugged=False)
        r.run(500)
        self.assertEqual(len(r.station.outbox), 0)
        self.assertEqual(len(r.station.sessions.pending()), 1)
        r2 = r.reboot()                                  # now with a backend configured
        r2.run(50)
        self.assertEqual(len(held_records(r2.station, KIND_SESSION)), 1)

    def test_a_full_outbox_of_sessions_drops_none_the_rest_wait_in_the_journal(self):
        r = Rig(config=dict(BACKEND, outbox_capacity=4))
        st = r.station
        r.run(50)
        for _ in range(6):
            r.ev(plugged=True)
            r.run(600)
            r.ev(plugged=False)
            r.run(400)
        held = [x.id for x in held_records(st, KIND_SESSION)]
        self.assertEqual(len(held), 4)
        self.assertEqual(st.outbox.stats()["dropped_session"], 0)
        self.assertEqual(len(st.sessions.pending()), 6)
        self.assertFalse(st.faults.is_active(faults.OUTBOX_OVERFLOW))
        # The backend catches up: the two waiting records follow, oldest first.
        for rid in held:
            st.outbox.ack(rid)
        r.run(100)
        later = [x.id for x in held_records(st, KIND_SESSION)]
        self.assertEqual(len(later), 2)
        self.assertEqual(len(st.sessions.pending()), 2)
        self.assertEqual(sorted(later), sorted(p["id"] for p in st.sessions.pending()))

    def test_power_loss_mid_session_is_closed_as_power_loss(self):
        r = Rig()
        r.run(50)
        r.ev(plugged=True, s2=S2_C)
        r.run(70000)                                     # past one live checkpoint
        r2 = r.reboot()                                  # no meter: closed at boot
        r2.run(50)
        recs = [x.data for x in held_records(r2.station, KIND_SESSION)]
        self.assertEqual(len(recs), 1)
        self.assertEqual(recs[0]["stop_reason"], "power_loss")
        self.assertEqual(r2.station.boot_id, r.station.boot_id + 1)


class Reader:
    """An RFID reader double (firmware.auth.IdTagReader): each card is read once."""

    def __init__(self):
        self.cards = []

    def poll(self):
        return self.cards.pop(0) if self.cards else None


class ReaderBoard(SimBoard):
    def __init__(self, reader, **kw):
        SimBoard.__init__(self, **kw)
        self.reader = reader

    def id_tag_reader(self):
        return self.reader


class Authorization(unittest.TestCase):
    def rig(self, config):
        reader = Reader()
        r = Rig(config=config)
        r.board = ReaderBoard(reader)
        r.station = Station(r.board, config=config, store=Store("/data", r.fs))
        return r, reader

    def test_local_list_card_authorizes_and_an_unknown_card_does_not(self):
        r, reader = self.rig({"auth_mode": "local"})
        st = r.station
        st.auth.allow_list.replace(1, ["CAFE01"])
        r.ev(plugged=True, s2=S2_C)
        r.run(1000)
        self.assertFalse(r.board.contactor_cmd)          # B1/C1: nothing offered yet
        self.assertEqual(st.charger.offered_ma, 0)
        reader.cards.append("BADBAD")
        r.run(1000)
        self.assertFalse(st.charger.authorized)
        reader.cards.append("cafe01")                    # idTags are case-insensitive
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertEqual(st.sessions.active["id_tag"], "cafe01")

    def test_another_card_does_not_take_over_a_running_session(self):
        # Who pays is the card that started the session: a second listed card presented
        # at the charging station is refused and changes nothing.
        r, reader = self.rig({"auth_mode": "local"})
        st = r.station
        st.auth.allow_list.replace(1, ["CAFE01", "BEEF02"])
        r.ev(plugged=True, s2=S2_C)
        r.run(500)
        reader.cards.append("CAFE01")
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertEqual(st.present_id_tag("BEEF02", r.board.ticks_ms())[0], False)
        r.run(500)
        self.assertEqual(st.sessions.active["id_tag"], "CAFE01")
        self.assertTrue(r.board.contacts_closed)
        self.assertEqual(st.present_id_tag("cafe01", r.board.ticks_ms())[0], True)
        self.assertEqual(st.sessions.active["id_tag"], "CAFE01")

    def test_backend_mode_offline_uses_the_local_list(self):
        r, reader = self.rig({"auth_mode": "backend", "offline_policy": "local_list"})
        st = r.station
        st.auth.allow_list.replace(1, ["CAFE01"])
        r.ev(plugged=True)
        r.run(500)
        reader.cards.append("CAFE01")                    # no backend configured: offline
        r.run(1000)
        self.assertTrue(st.charger.authorized)
        self.assertEqual(st.sessions.active["auth"], "offline_local_list")


class Network(unittest.TestCase):
    def test_wifi_is_started_from_the_config_and_kept_up_every_iteration(self):
        class NetBoard(SimBoard):
            started = None
            steps = 0

            def start_network(self, ssid, password, ntp_server):
                self.started = (ssid, password, ntp_server)

            def network_step(self, now_ms):
                self.steps += 1
        b = NetBoard()
        st = Station(b, config={"wifi_ssid": "depot", "wifi_password": "depot-pw1",
                                "ntp_server": "192.0.2.1"},
                     store=Store("/data", PowerCutFs()))
        self.assertEqual(b.started, ("depot", "depot-pw1", "192.0.2.1"))
        for _ in range(10):
            st.step()
        self.assertEqual(b.steps, 10)

    def test_the_boot_recovery_hold_pauses_only_the_events(self):
        from meter_doubles import ScriptedStream, SimClock

        class NetBoard(SimBoard):
            steps = 0

            def network_step(self, now_ms):
                self.steps += 1
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        r.run(70000)                                     # a live session on flash
        r.fs.restart()
        b = NetBoard(meter_uart=ScriptedStream(SimClock()), start_ms=r.board.now_ms + 5000)
        st = Station(b, config=BACKEND, store=Store("/data", r.fs))
        self.assertTrue(st.sessions.recovering)
        for _ in range(50):                              # the silent meter holds the events
            st.step()
            b.sleep_ms(TICK_MS)
        self.assertTrue(st.sessions.recovering)
        self.assertEqual(b.steps, 50)                    # ... but not the rest of the loop

    def test_no_ssid_no_wifi(self):
        class NetBoard(SimBoard):
            started = False

            def start_network(self, ssid, password, ntp_server):
                self.started = True
        b = NetBoard()
        Station(b, store=Store("/data", PowerCutFs()))
        self.assertFalse(b.started)


class Faults(unittest.TestCase):
    def test_rcd_trip_opens_at_once_and_goes_to_the_outbox(self):
        r = Rig()
        r.run(50)
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        r.board.rcd_fault = True
        self.assertEqual(r.run_until(lambda: not r.board.contactor_cmd, 100), TICK_MS)
        r.run(100)
        held = [x.data for x in held_records(r.station, KIND_FAULT)]
        self.assertIn("RCD_TRIPPED", [h["fault"] for h in held])
        self.assertIn("RCD_TRIPPED", r.station.status()["faults"])

    def test_crash_reported_by_the_board_raises_internal_error_until_cleared(self):
        class CrashedBoard(SimBoard):
            crash = "Traceback: ZeroDivisionError"

            def last_crash(self):
                return self.crash

            def clear_crash(self):
                self.crash = None
        board = CrashedBoard()
        st = Station(board, config=BACKEND, store=Store("/data", PowerCutFs()))
        self.assertTrue(st.faults.is_active(faults.INTERNAL_ERROR))
        self.assertEqual(st.boot_report["crash"], "Traceback: ZeroDivisionError")
        # Not a blocking fault: the station still charges.
        self.assertEqual(st.faults.blocking(), 0)
        for _ in range(5):
            st.step()
        recs = [x.data for x in held_records(st, KIND_FAULT)]
        self.assertEqual(recs[0]["detail"], "Traceback: ZeroDivisionError")
        self.assertIsNotNone(board.crash)
        self.assertIsNone(st.cmd_clear_fault("INTERNAL_ERROR", 0))
        st.step()
        self.assertIsNone(board.crash)


    def test_a_failing_background_task_does_not_stop_the_safety_tick(self):
        r = Rig()
        st = r.station
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))

        def out_of_memory(now_ms):
            raise MemoryError("memory allocation failed")
        st.sessions.tick = out_of_memory
        r.run(100)
        self.assertTrue(st.service_errors >= 10)
        self.assertIn("MemoryError", st.last_service_error)
        self.assertTrue(st.faults.is_active(faults.INTERNAL_ERROR))
        r.ev(plugged=False, s2=S2_OPEN)
        self.assertEqual(r.run_until(lambda: not r.board.contactor_cmd, 100), TICK_MS)


class Commands(unittest.TestCase):
    def test_bad_config_is_refused_and_changes_nothing(self):
        r = Rig()
        st = r.station
        before = st.cfg["max_current_ma"]
        self.assertIn("out of range", st.cmd_set_config({"max_current_ma": 5})[1])
        self.assertIn("unknown key", st.cmd_set_config({"max_current_ma": 16000, "nope": 1})[1])
        self.assertEqual(st.cfg["max_current_ma"], before)
        self.assertIsNone(r.fs.medium.get("/data/config.json"))

    def test_config_change_is_applied_stored_and_kept_after_reset(self):
        r = Rig()
        self.assertIsNone(r.station.cmd_set_config({"max_current_ma": 16000}))
        r.ev(plugged=True)
        r.run(1000)
        self.assertEqual(r.station.charger.offered_ma, 16000)
        r2 = r.reboot()
        self.assertEqual(r2.station.cfg["max_current_ma"], 16000)

    def test_meter_settings_reach_the_running_meter_and_a_bad_map_changes_nothing(self):
        from meter_doubles import ScriptedStream, SimClock
        board = SimBoard(meter_uart=ScriptedStream(SimClock()))
        st = Station(board, store=Store("/data", PowerCutFs()))
        self.assertIsNone(st.cmd_set_config({"meter_addr": 3, "meter_poll_ms": 2000}))
        self.assertEqual((st.meter.addr, st.meter.poll_ms), (3, 2000))
        bad = st.cmd_set_config({"meter_map": "custom", "meter_custom_map": "{}"})
        self.assertEqual(bad[0], "PropertyConstraintViolation")   # (code, reason)
        self.assertEqual(st.cfg["meter_map"], "sdm630")
        self.assertEqual(st.meter.map.name, "sdm630")

    def test_secrets_are_masked(self):
        r = Rig()
        self.assertIsNone(r.station.cmd_set_config({"mqtt_password": "hunter2"}))
        shown = r.station.cmd_get_config(["mqtt_password"])
        self.assertEqual(shown, {"mqtt_password": "***"})
        self.assertTrue("hunter2" not in json.dumps(r.station.cmd_diagnostics()))

    def test_corrupt_config_file_is_reported_and_falls_back_to_the_minimum(self):
        # No valid copy either: never the 32 A default (tests/unit/test_config_store.py).
        fs = PowerCutFs()
        Store("/data", fs).write_atomic("config.json", b"{not json")
        fs.restart()
        r = Rig(fs)
        self.assertIn("config.json: not valid JSON", r.station.config_error)
        self.assertEqual(r.station.cfg["max_current_ma"], 6000)
        self.assertEqual(r.station.faults.counts[faults.STORAGE_ERROR], 1)

    def test_stop_pauses_and_start_resumes_in_one_session(self):
        r = Rig()
        st = r.station
        self.assertEqual(st.cmd_stop(0), ("NO_SESSION", "no session"))
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        sid = st.sessions.active["id"]
        self.assertIsNone(st.cmd_stop(0))
        # PWM off; the simulated EV keeps S2 closed, so the EVSE opens after pwm_off_open_ms.
        took = r.run_until(lambda: not r.board.contactor_cmd, 7000)
        self.assertIsNotNone(took)
        self.assertTrue(took <= st.cfg["pwm_off_open_ms"] + 2 * TICK_MS)
        self.assertIsNone(st.cmd_start(r.board.ticks_ms()))
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertEqual(st.sessions.active["id"], sid)

    def test_a_stop_meant_for_an_earlier_session_is_refused(self):
        # A stop held back by an outage arrives after that EV left and the next one
        # plugged in: it names the old session, or was sent before this one began. It
        # must not end the next driver's charge (docs/mqtt.md, stop).
        r = Rig()
        st = r.station
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        first = st.sessions.active["id"]
        sent = r.board.wall_time()
        r.ev(plugged=False)
        r.run(2000)
        r.run(40000)                                  # the next EV comes 40 s later
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        second = st.sessions.active
        self.assertNotEqual(second["id"], first)
        now = r.board.ticks_ms()
        code, why = st.cmd_stop(now, session_id=first)
        self.assertEqual(code, "OTHER_SESSION")
        self.assertTrue(first in why)
        code, why = st.cmd_stop(now, sent_at=sent)
        self.assertEqual(code, "OTHER_SESSION")
        self.assertTrue("before the running session began" in why)
        r.run(1000)
        self.assertTrue(r.board.contactor_cmd and not st.charger.paused)
        # Within the clocks' allowed skew, and naming the running session: it stops.
        self.assertIsNone(st.cmd_stop(now, session_id=second["id"],
                                      sent_at=second["start_time"] - 3))
        self.assertTrue(st.charger.paused)

    def test_limit_with_expiry(self):
        r = Rig()
        st = r.station
        r.ev(plugged=True)
        r.run(500)
        self.assertIsNone(st.cmd_set_limit(10000, 60, r.board.ticks_ms()))
        r.run(100)
        self.assertEqual(st.charger.offered_ma, 10000)
        r.run(61000)
        self.assertEqual(st.charger.offered_ma, 32000)

    def test_a_limit_below_6_amps_pauses_until_one_of_6_amps_or_more(self):
        # IEC 61851-1: no duty offers less than 6 A, so the charge pauses: PWM off (x1, the
        # pilot steady at +12 V), the contactor opens when the EV stops or after
        # pwm_off_open_ms; the status says why.
        from firmware.board import PILOT_STEADY_HIGH
        r = Rig()
        st = r.station
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertFalse(st.status()["paused_by_limit"])
        self.assertIsNone(st.cmd_set_limit(3000, None, r.board.ticks_ms()))
        r.run(20)
        self.assertEqual((st.charger.offered_ma, r.board.duty), (0, PILOT_STEADY_HIGH))
        self.assertEqual(st.status()["state"], "C1")
        self.assertTrue(r.run_until(lambda: not r.board.contacts_closed, 6100) is not None)
        status = st.status()
        self.assertEqual((status["paused_by_limit"], status["paused"], status["limit"]),
                         (True, False, "backend"))
        self.assertIsNotNone(st.sessions.active)        # a pause, not the end of the session
        r.run(10000)
        self.assertEqual(r.board.duty, PILOT_STEADY_HIGH)
        self.assertIsNone(st.cmd_set_limit(16000, None, r.board.ticks_ms()))
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertEqual(st.charger.offered_ma, 16000)
        self.assertEqual(st.status()["state"], "C2")
        self.assertFalse(st.status()["paused_by_limit"])

    def test_the_retained_status_follows_a_pausing_limit_without_an_ev(self):
        # Nothing is offered either way without an EV: the status still goes out anew.
        r = Rig()
        st = r.station
        r.run(100)
        self.assertFalse(json.loads(st.link._status)["paused_by_limit"])
        st.cmd_set_limit(0, None, r.board.ticks_ms())
        r.run(100)
        self.assertTrue(json.loads(st.link._status)["paused_by_limit"])
        st.cmd_set_limit(6000, None, r.board.ticks_ms())
        r.run(100)
        self.assertFalse(json.loads(st.link._status)["paused_by_limit"])

    def test_a_week_long_limit_outlasts_the_ticks_half_period(self):
        # 604800 s is more than 2**29 ms: the expiry is counted down, not a ticks deadline.
        r = Rig(config={})           # no backend, so no comms-loss fallback in this week
        st = r.station
        r.ev(plugged=True)
        r.run(500)
        self.assertIsNone(st.cmd_set_limit(10000, 604800, r.board.ticks_ms()))
        b = r.board
        for _ in range(7 * 24 - 1):                      # an hour per jump, less than a week
            b.now_ms += 3599000
            r.run(1000)
        self.assertEqual(st.charger.offered_ma, 10000)
        b.now_ms += 3600000
        r.run(1000)
        r.run(6000)
        self.assertEqual(st.charger.offered_ma, 32000)

    def test_unknown_fault_name_and_refused_remote_clear(self):
        r = Rig()
        st = r.station
        self.assertIn("unknown", st.cmd_clear_fault("NO_SUCH_FAULT", 0)[1])
        st.faults.raise_(faults.CONTACTOR_WELDED, 0, present=False)
        self.assertEqual(st.cmd_clear_fault("CONTACTOR_WELDED", 0)[0], "ON_SITE")
        self.assertTrue(st.faults.is_active(faults.CONTACTOR_WELDED))

    def test_reboot_waits_for_the_contactor_then_resets(self):
        from tools.pilotsim.simboard import SimReset
        r = Rig()
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertIsNone(r.station.cmd_reboot(r.board.ticks_ms()))
        with self.assertRaises(SimReset):
            r.run(10000)
        self.assertFalse(r.board.contactor_cmd)
        self.assertEqual(r.board.reset_requests, 1)
        # The session is closed as "reboot" before the reset, not left for power-loss recovery.
        r2 = r.reboot()
        r2.run(50)
        recs = r2.station.outbox.records()
        self.assertEqual([x.data["stop_reason"] for x in recs if x.kind == KIND_SESSION],
                         ["reboot"])


class SafetyTickAllocation(unittest.TestCase):
    def test_station_safety_tick_allocates_nothing(self):
        if not IS_MICROPYTHON:
            raise unittest.SkipTest("heap_lock exists on MicroPython only")
        import micropython
        r = Rig()
        st = r.station
        b = r.board
        plan = ((True, S2_OPEN), (True, S2_C), (False, S2_OPEN))
        for plugged, s2 in plan:
            r.ev(plugged=plugged, s2=s2)
            for _ in range(300):
                now = b.ticks_ms()
                micropython.heap_lock()
                try:
                    st.safety_tick(now)
                finally:
                    micropython.heap_unlock()
                b.now_ms += TICK_MS
                st.events.clear()


def fail_once(real, exc, failures, when):
    """`real` wrapped to raise `exc` the first time `when(*args)` holds (args go to
    `failures`); otherwise it calls through."""
    def wrapper(*args):
        if not failures and when(*args):
            failures.append(args)
            raise exc
        return real(*args)
    return wrapper


class ServiceGuardAndCommands(unittest.TestCase):
    def plugged_in(self):
        r = Rig()
        r.run(50)
        r.ev(plugged=True)
        r.run(1000)
        return r

    def charging(self, config=BACKEND):
        r = Rig(config=config)
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        return r

    def test_reboot_goes_ahead_while_a_background_task_keeps_failing(self):
        # A remote reboot is the remedy for a background task that fails every iteration;
        # it must not wait behind that task (the charger stays paused meanwhile).
        from tools.pilotsim.simboard import SimReset
        r = self.charging()
        st = r.station

        def out_of_memory(now_ms):
            raise MemoryError("memory allocation failed")
        st.sessions.tick = out_of_memory
        self.assertIsNone(st.cmd_reboot(r.board.ticks_ms()))
        with self.assertRaises(SimReset):
            r.run(10000)
        self.assertFalse(r.board.contactor_cmd)
        self.assertEqual(r.board.reset_requests, 1)

    def test_the_guard_survives_when_reporting_the_failure_fails_too(self):
        # Out of memory, the report of the failure (an MQTT event) cannot be built either:
        # the loop and its safety tick must still go on.
        r = self.charging()
        st = r.station

        def out_of_memory(*args, **kw):
            raise MemoryError("memory allocation failed")
        st.sessions.tick = out_of_memory
        st.link.publish_event = out_of_memory
        r.run(100)
        self.assertTrue(st.service_errors >= 10)
        self.assertTrue(st.faults.is_active(faults.INTERNAL_ERROR))
        r.ev(plugged=False, s2=S2_OPEN)
        self.assertEqual(r.run_until(lambda: not r.board.contactor_cmd, 100), TICK_MS)

    def test_start_does_not_undo_the_pause_of_a_scheduled_reboot(self):
        # The reboot paused charging so the EV stops before the reset; a start in between
        # would have the reset cut a charging EV under load.
        r = self.charging()
        st = r.station
        self.assertIsNone(st.cmd_reboot(r.board.ticks_ms()))
        r.run(200)
        self.assertEqual(st.cmd_start(r.board.ticks_ms())[0], "BUSY")
        self.assertTrue(st.charger.paused)

    def test_selftest_command_is_refused_when_the_self_test_is_disabled(self):
        r = Rig(config=dict(BACKEND, rcd_selftest=False))
        st = r.station
        r.run(100)
        self.assertIn("rcd_selftest", st.cmd_selftest(r.board.ticks_ms())[1])
        r = Rig()
        r.run(100)
        self.assertIsNone(r.station.cmd_selftest(r.board.ticks_ms()))

    def test_comms_fallback_change_applies_while_the_fallback_is_active(self):
        r = Rig(config=dict(BACKEND, comms_loss_timeout_s=10, comms_fallback_ma=0))
        st = r.station
        r.ev(plugged=True)
        r.run(11000)
        from firmware.charger import LIMIT_COMMS
        self.assertEqual(st.charger.limit_why(), LIMIT_COMMS)   # fallback 0: paused
        self.assertEqual(st.charger.offered_ma, 0)
        self.assertIsNone(st.cmd_set_config({"comms_fallback_ma": 16000}))
        r.run(6000)
        self.assertEqual(st.charger.offered_ma, 16000)

    def test_a_record_the_outbox_could_not_store_is_delivered_once_the_flash_works(self):
        # Flash trouble while a session record goes to the outbox: the record must not
        # wait for the next reboot, and it is a storage fault, not an internal error.
        from firmware.storage import StorageError
        r = self.plugged_in()
        st = r.station
        failures = []
        st.outbox.put = fail_once(st.outbox.put, StorageError("flash full"), failures,
                                  lambda kind, data: True)
        r.ev(plugged=False)
        r.run(500)
        self.assertEqual([f[0] for f in failures], [KIND_SESSION])
        self.assertEqual(len(held_records(st, KIND_SESSION)), 1)
        self.assertEqual(st.service_errors, 0)
        self.assertEqual(st.faults.counts[faults.STORAGE_ERROR], 1)
        self.assertFalse(st.faults.is_active(faults.INTERNAL_ERROR))

    def test_unplug_while_inoperative_closes_the_session(self):
        r = self.charging()
        st = r.station
        self.assertIsNone(st.cmd_set_availability(False, r.board.ticks_ms()))
        r.ev(s2=S2_OPEN)
        self.assertIsNotNone(r.run_until(lambda: not r.board.contactor_cmd, 7000))
        r.run(500)
        r.ev(plugged=False)
        r.run(500)
        self.assertEqual(st.status()["state"], "UNAVAILABLE")
        self.assertIsNone(st.sessions.active)
        recs = [x.data for x in held_records(st, KIND_SESSION)]
        # What ended the energy transfer: the operator took the station out of service.
        self.assertEqual([x["stop_reason"] for x in recs], ["inoperative"])

    def test_a_station_whose_flash_refuses_writes_still_boots_and_charges(self):
        # Counters are written at boot, before the backend link exists: a storage failure
        # there is a STORAGE_ERROR, not a crash of the constructor (and a reset loop).
        from firmware.storage import StorageError

        class FullStore(Store):
            def write_atomic(self, name, data):
                raise StorageError("%s: flash full" % name)
        board = SimBoard()
        st = Station(board, config=BACKEND, store=FullStore("/data", PowerCutFs()))
        self.assertEqual(st.faults.counts[faults.STORAGE_ERROR], 1)
        board.model.plugged = True
        board.model.s2 = S2_C
        board.model.update()
        for _ in range(300):
            st.step()
            board.sleep_ms(TICK_MS)
        self.assertTrue(board.contacts_closed)

    def test_inoperative_survives_a_reboot_until_set_operative(self):
        # A station the operator took out of service (a damaged socket, say) must not
        # come back charging after a power cut.
        r = Rig()
        r.run(100)
        self.assertIsNone(r.station.cmd_set_availability(False, r.board.ticks_ms()))
        r2 = r.reboot()
        r2.ev(plugged=True, s2=S2_C)
        r2.run(3000)
        self.assertFalse(r2.station.charger.available)
        self.assertFalse(r2.board.contactor_cmd)
        self.assertFalse(r2.station.status()["available"])
        self.assertIsNone(r2.station.cmd_set_availability(True, r2.board.ticks_ms()))
        r3 = r2.reboot()
        r3.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r3.run_until(lambda: r3.board.contacts_closed, 3000))

    def test_an_event_whose_handling_failed_once_is_handled_again(self):
        # Out of memory while the unplug is handled: the event was already taken from
        # the ring, so the session stayed open and the next EV would have been billed to
        # it. A failed event is retried once.
        r = self.plugged_in()
        st = r.station
        failures = []
        st.sessions.on_state = fail_once(st.sessions.on_state,
                                         MemoryError("memory allocation failed"), failures,
                                         lambda now_ms, state: state == 0)
        r.ev(plugged=False)
        r.run(500)
        self.assertEqual([f[1] for f in failures], [0])
        self.assertEqual(st.service_errors, 1)
        self.assertIsNone(st.sessions.active)
        recs = [x.data for x in held_records(st, KIND_SESSION)]
        self.assertEqual([x["stop_reason"] for x in recs], ["ev_unplugged"])


class FakeGc:
    """Stands for the gc module: reports `free` bytes and counts collections."""

    def __init__(self, free):
        self.free = free
        self.collected = 0

    def mem_free(self):
        return self.free

    def collect(self):
        self.collected += 1


class CollectAheadOfNeed(unittest.TestCase):
    # The collector runs between iterations once free heap is low, not only when an
    # allocation fails (a non-compacting heap of 56 KB fragments otherwise).
    def run_with(self, free):
        from firmware import station as station_module
        r = Rig()
        fake = FakeGc(free)
        real = station_module.gc, station_module.mem_free
        station_module.gc, station_module.mem_free = fake, fake.mem_free
        try:
            r.run(100)
        finally:
            station_module.gc, station_module.mem_free = real
        return r.station, fake

    def test_low_free_heap_collects_after_every_iteration(self):
        st, fake = self.run_with(4 * 1024)
        self.assertEqual(fake.collected, 10)
        self.assertEqual(st.collections, 10)
        self.assertEqual(st.diagnostics()["collections"], 10)

    def test_plenty_of_free_heap_leaves_the_collector_alone(self):
        st, fake = self.run_with(40 * 1024)
        self.assertEqual(fake.collected, 0)
        self.assertEqual(st.collections, 0)
