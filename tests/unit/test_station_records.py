# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The backend contract's records on the whole station (simulator board, simulated time):
# the stop reason, the start record, UTC time and the offered current as the duty codes it.
import unittest

from firmware.outbox import KIND_FAULT, KIND_SESSION, KIND_SESSION_START
from firmware.station import applied_ma, coded_ma
from firmware.pilot import duty_for_current
from tools.pilotsim.model import S2_C, S2_OPEN

from test_station import BACKEND, Rig, held_records


def charging(config=BACKEND):
    r = Rig(config=config)
    r.ev(plugged=True, s2=S2_C)
    assert r.run_until(lambda: r.board.contacts_closed, 3000) is not None
    return r


class OfferedCurrentIsWhatTheDutySays(unittest.TestCase):
    def test_the_codes_of_the_duty(self):
        # 52 A has no duty of its own (IEC 61851-1 Table A.8: 85.0 % is 51 A, 85.1 % is
        # already 52.75 A); 16 A rounds down to 26.6 % = 15.96 A.
        self.assertEqual(coded_ma(52000), 51000)
        self.assertEqual(coded_ma(16000), 15960)
        self.assertEqual(coded_ma(5999), 0)
        self.assertEqual(applied_ma(duty_for_current(52000)), 51000)
        self.assertEqual((applied_ma(1000), applied_ma(0)), (0, 0))

    def test_status_and_telemetry_report_the_applied_duty(self):
        # A tethered cable (no PP coding) so that the installation limit decides.
        r = charging(dict(BACKEND, max_current_ma=52000, socket_outlet=False))
        st = r.station
        self.assertEqual(st.charger.offered_ma, 52000)          # the target
        self.assertEqual(st.status()["offered_ma"], 51000)      # what the EV is told
        self.assertEqual(st.telemetry()["offered_ma"], 51000)
        offers = [e for e in st.link._events if b'"offer"' in e]
        self.assertTrue(offers and b'"offered_ma": 51000' in offers[-1], offers)


class RecordsOnTheStation(unittest.TestCase):
    def test_a_start_record_goes_to_the_outbox_and_the_end_takes_its_place(self):
        r = charging()
        st = r.station
        r.run(200)
        (start,) = held_records(st, KIND_SESSION_START)
        self.assertEqual(start.id, "start-%s" % st.sessions.active["id"])
        data = start.data
        self.assertEqual((data["auth"], data["connector_id"]), ("free", 1))
        # The SimBoard's clock is set: UTC seconds of the start.
        self.assertEqual((data["time_source"], data["time"]), ("wall", data["start_time"]))
        self.assertTrue(abs(data["time"] - r.board.wall_time()) <= 5)
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(4000)
        self.assertEqual(held_records(st, KIND_SESSION_START), [])
        (end,) = held_records(st, KIND_SESSION)
        self.assertEqual(end.data["stop_reason"], "ev_unplugged")
        self.assertEqual(st.outbox.stats()["overflow"], 0)

    def test_a_reset_before_the_start_record_is_stored_sends_it_after_the_boot(self):
        r = Rig()
        r.run(50)
        r.station.outbox.put = lambda kind, data: None          # lost before the flash
        r.ev(plugged=True)
        r.run(300)
        r2 = r.reboot()
        r2.run(300)
        kinds = sorted(x.kind for x in r2.station.outbox.records())
        # The cut session closes at boot: its end record carries the start's fields.
        self.assertEqual(kinds, [KIND_SESSION])

    def test_the_fault_that_opened_the_contactor_is_the_stop_reason(self):
        r = charging()
        st = r.station
        r.run(2000)
        r.board.rcd_fault = True
        r.run(500)
        r.board.rcd_fault = False
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(4000)
        (end,) = held_records(st, KIND_SESSION)
        self.assertEqual(end.data["stop_reason"], "fault:RCD_TRIPPED")
        self.assertTrue("RCD_TRIPPED" in end.data["faults"])
        faults = [x.data for x in held_records(st, KIND_FAULT)]
        self.assertTrue(faults and all("time" in f for f in faults))

    def test_a_backend_stop_is_the_reason_though_the_ev_opened(self):
        r = charging()
        st = r.station
        r.run(1000)
        self.assertIsNone(st.cmd_stop(r.board.ticks_ms()))
        r.ev(s2=S2_OPEN)                                         # the EV follows the PWM
        r.run(1000)
        r.ev(plugged=False)
        r.run(4000)
        (end,) = held_records(st, KIND_SESSION)
        self.assertEqual(end.data["stop_reason"], "remote_stop")

    def test_the_ev_stopping_by_itself_is_ev_stopped(self):
        r = charging()
        st = r.station
        r.run(1000)
        r.ev(s2=S2_OPEN)
        r.run(1000)
        r.ev(plugged=False)
        r.run(4000)
        (end,) = held_records(st, KIND_SESSION)
        self.assertEqual(end.data["stop_reason"], "ev_stopped")

    def test_a_remote_start_with_an_id_tag_before_plug_in(self):
        r = Rig(config=dict(BACKEND, auth_mode="backend"))
        st = r.station
        r.run(50)
        self.assertIsNone(st.cmd_start(r.board.ticks_ms(), "04A2B3C4", 1))
        r.run(200)
        (start,) = held_records(st, KIND_SESSION_START)
        self.assertEqual((start.data["id_tag"], start.data["auth"]), ("04A2B3C4", "backend"))
        r.ev(plugged=True, s2=S2_C)
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        self.assertEqual(st.cmd_start(r.board.ticks_ms(), "OTHER", 1)[0], "OCCUPIED")


if __name__ == "__main__":
    unittest.main()
