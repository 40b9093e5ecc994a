# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# A session ends when its EV leaves. The station holds the unplug until the meter's final
# reading is in (so the last poll interval's energy is billed); what happens during that
# hold (a backend stop, a fault, a reboot, a power cut) does not rewrite how it ended.
import unittest

from firmware.config import Config
from firmware.counters import Counters
from firmware.outbox import KIND_SESSION
from firmware.session import LIVE_FILE, SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2
from firmware.storage import Store
from tools.powercut_fs import PowerCut, PowerCutFs
from reset_rig import Rig
from tools.pilotsim.model import S2_OPEN
from tools.pilotsim.simboard import SimReset

BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9, "rcd_selftest": False}


def _records(st):
    return [x.data for x in st.outbox.records() if x.kind == KIND_SESSION]


class StationHold(unittest.TestCase):
    def charging(self, final_ms=500):
        r = Rig(config=BACKEND, meter=True, final_ms=final_ms)
        r.plug_and_request()
        self.assertIsNotNone(r.run_until(lambda: r.board.contacts_closed, 3000))
        r.run(2000)
        return r

    def test_a_stop_100_ms_after_the_unplug_finds_no_session(self):
        r = self.charging()
        st = r.station
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(100)
        self.assertTrue(st._held is not None)          # waiting for the final reading
        self.assertEqual(st.cmd_stop(r.board.ticks_ms()), ("NO_SESSION", "no session"))
        r.run(1000)
        self.assertIsNone(st._held)
        self.assertEqual([x["stop_reason"] for x in _records(st)], ["ev_unplugged"])

    def test_a_stop_before_the_unplug_is_the_reason(self):
        r = self.charging()
        st = r.station
        self.assertIsNone(st.cmd_stop(r.board.ticks_ms()))
        r.run(200)
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(1000)
        self.assertEqual([x["stop_reason"] for x in _records(st)], ["remote_stop"])

    def test_a_power_cut_50_ms_after_the_unplug_records_the_unplug(self):
        r = self.charging()
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(50)
        self.assertTrue(r.station._held is not None)
        stopped_at = r.station.sessions._session.last_wall     # the clock is set
        r2 = r.boot_again()
        r2.run(200)
        recs = _records(r2.station)
        self.assertEqual([x["stop_reason"] for x in recs], ["ev_unplugged"])
        self.assertEqual(recs[0]["stop_time"], stopped_at)

    def test_a_power_cut_at_every_flash_operation_of_the_hold(self):
        probe = self.charging()
        before = probe.fs.ops
        probe.ev(plugged=False, s2=S2_OPEN)
        probe.run(1000)
        after = probe.fs.ops
        self.assertTrue(after > before)
        log = probe.fs.log
        # The session's end goes to flash first: the live checkpoint saying it ended.
        self.assertEqual(log[before], "open wb /data/%s.tmp" % LIVE_FILE)
        ended_at = [i + 1 for i in range(before, after)
                    if log[i] == "rename /data/%s.tmp /data/%s" % (LIVE_FILE, LIVE_FILE)][0]
        for k in range(before + 1, after + 1):
            fs = PowerCutFs(cut_at=k)
            r = Rig(fs=fs, config=BACKEND, meter=True, final_ms=500)
            r.plug_and_request()
            r.run_until(lambda: r.board.contacts_closed, 3000)
            r.run(2000)
            r.ev(plugged=False, s2=S2_OPEN)
            try:
                r.run(1000)
            except PowerCut:
                pass
            r2 = r.boot_again(fs=fs.restart())
            r2.run(200)
            reasons = [x["stop_reason"] for x in _records(r2.station)]
            # power_loss only when the cut came before the session's end was on flash
            self.assertEqual(reasons, ["ev_unplugged" if k > ended_at else "power_loss"],
                             (k, log[k - 1]))

    def test_a_reboot_during_the_hold_keeps_the_unplug(self):
        r = self.charging(final_ms=2000)
        st = r.station
        r.ev(plugged=False, s2=S2_OPEN)
        r.run(100)
        self.assertIsNone(st.cmd_reboot(r.board.ticks_ms()))
        with self.assertRaises(SimReset):
            r.run(5000)
        r2 = r.boot_again()
        r2.run(100)
        self.assertEqual([x["stop_reason"] for x in _records(r2.station)], ["ev_unplugged"])


class SessionManagerEnd(unittest.TestCase):
    def manager(self, fs):
        store = Store("/data", fs)
        counters = Counters(store)
        boot = counters.boot(0)
        return SessionManager(Config({}), store, counters, boot)

    def test_later_events_do_not_rewrite_an_ended_session(self):
        sm = self.manager(PowerCutFs())
        sm.on_state(1000, STATE_B2)
        sm.on_state(1000, STATE_C2)
        sm.on_contactor(1000, True)
        sm.on_meter(1000, 5000, 7000, True)
        sm.on_contactor(61000, False)
        sm.unplugged(61000)
        self.assertIsNone(sm.active)
        sm.stop_reason("remote_stop")
        sm.on_fault(61100, "RCD_TRIPPED")
        sm.on_meter(61500, 5120, 0, True)             # the final reading
        sm.on_state(61000, STATE_A)
        (rec,) = sm.pop_completed()
        self.assertEqual(rec["stop_reason"], "ev_unplugged")
        self.assertEqual(rec["faults"], [])
        self.assertEqual(rec["energy_wh"], 120)
        self.assertEqual(rec["duration_s"], 60)
        self.assertEqual(rec["stop_time"], 61000)

    def test_an_ended_session_found_at_boot_ends_as_it_ended_with_the_register(self):
        fs = PowerCutFs()
        sm = self.manager(fs)
        sm.on_state(1000, STATE_B2)
        sm.on_meter(1000, 5000, 0, True)
        sm.stop_reason("remote_stop")
        sm.unplugged(30000)
        sm2 = self.manager(fs.restart())
        self.assertTrue(sm2.recovering)
        rec = sm2.recover(100, 5010)
        self.assertEqual(rec["stop_reason"], "remote_stop")
        self.assertEqual(rec["energy_wh"], 10)

    def test_a_checkpoint_of_older_firmware_still_loads(self):
        import json
        fs = PowerCutFs()
        sm = self.manager(fs)
        sm.on_state(1000, STATE_B2)
        store = Store("/data", fs)
        d = json.loads(store.read(LIVE_FILE))
        del d["ended"]
        store.write_atomic(LIVE_FILE, json.dumps(d).encode())
        sm2 = self.manager(fs.restart())
        self.assertEqual(sm2.recover(5)["stop_reason"], "power_loss")

    def test_an_authorization_during_the_hold_starts_the_next_session(self):
        sm = self.manager(PowerCutFs())
        sm.on_state(1000, STATE_B2)
        sm.set_id_tag("CARD-A", 1000, "local_list")
        sm.unplugged(5000)
        sm.set_id_tag("CARD-B", 5100, "local_list")
        done = sm.pop_completed()
        self.assertEqual([(x["id_tag"], x["stop_reason"]) for x in done],
                         [("CARD-A", "ev_unplugged")])
        self.assertEqual(sm.active["id_tag"], "CARD-B")
