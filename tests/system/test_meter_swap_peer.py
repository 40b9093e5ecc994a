"""A meter exchanged mid-session, against a real Modbus meter (pymodbus as an SDM630).

The station runs on the stand-in at a real MicroPython REPL (tools/simrepl.py: the simulated
board, its RS-485 port wired to the peer, simulated time in lock-step with the peer's
answers). An EV charges; the meter's import register advances as energy flows; mid-session
the meter is replaced: another serial number on the serial-number register (0xFC00, FC03)
and another import register. The finished record must say so (rebased, swaps, both serial
numbers), and the energy must add up: the record plus the unbilled counter hold what went
through the two meters, less at most one poll interval at the exchange (docs/sessions.md,
"Energy ledger").
"""
import json
import re

from tests.system.meter_peer import MeterPeer
from tests.system.test_repl_diag import Repl

OLD_SERIAL = 20230001
NEW_SERIAL = 20250077
STEP_WH = 3             # per simulated second: 10.8 kW, plausible at 3 x 16 A x 230 V
POLL_S = 1              # meter_poll_ms default 1000


def _value(repl, expr):
    (line,) = repl("print(json.dumps(%s))" % expr)
    return json.loads(line)


def _records(repl):
    return _value(repl, "[json.loads(p)['r'] for p in Journal(sim.station.store, "
                        "JOURNAL_FILE).records() if json.loads(p).get('k') == 'done']")


def test_a_meter_swapped_mid_session_is_recorded_and_the_energy_adds_up(tmp_path):
    start_wh = 1000000
    with MeterPeer("sdm630", {"import_wh": start_wh, "power_w": 10800},
                   serial=OLD_SERIAL) as peer:
        repl = Repl(tmp_path, meter_port=peer.port)
        try:
            repl("import json")
            repl("from firmware.session import JOURNAL_FILE")
            repl("from firmware.storage import Journal")
            repl("sim.run(3000)")                      # the meter is read before the EV
            unbilled0 = _value(repl, "sim.station.counters.unbilled_wh")
            # 5 Wh through the meter while no session runs (a standby load): unbilled.
            reg = start_wh + 5
            peer.set_values(import_wh=reg)
            repl("sim.run(2000)")
            assert _value(repl, "sim.station.counters.unbilled_wh") == unbilled0 + 5
            unbilled0 += 5
            repl("sim.plug(); sim.run(1000); sim.request(); sim.run(2000)")
            assert _value(repl, "sim.board.contactor_cmd") is True
            old_wh = 0
            for _ in range(12):                        # the first meter counts
                reg += STEP_WH
                old_wh += STEP_WH
                peer.set_values(import_wh=reg)
                repl("sim.run(1000)")
            # Exchanged: another meter (its own serial number and register) on address 1.
            reg = 2500
            peer.set_serial(NEW_SERIAL)
            peer.set_values(import_wh=reg)
            repl("sim.run(1000)")
            new_wh = 0
            for _ in range(12):                        # the new meter counts
                reg += STEP_WH
                new_wh += STEP_WH
                peer.set_values(import_wh=reg)
                repl("sim.run(1000)")
            repl("sim.release(); sim.run(2000); sim.unplug(); sim.run(6000)")
            (rec,) = _records(repl)
            unbilled = _value(repl, "sim.station.counters.unbilled_wh") - unbilled0
            serial_now = _value(repl, "sim.station.meter.serial")
            # The technician sees the unbilled counter at the REPL.
            total = _value(repl, "sim.station.counters.unbilled_wh")
            shown = "%d.%03d kWh" % (total // 1000, total % 1000)
            repl("import diag")
            status = repl.text("diag.status()")
            counters = repl.text("diag.counters()")
        finally:
            repl.close()
        assert peer.requests > 30

    assert re.search(r"unbilled +%s \(metered, in no session\)" % re.escape(shown), status), status
    assert re.search(r"unbilled +%s$" % re.escape(shown), counters, re.M), counters
    flags = rec["meter_flags"]
    assert flags["swaps"] == 1 and flags["rebased"] == 1, flags
    assert (flags["serial_start"], flags["serial_stop"]) == (OLD_SERIAL, NEW_SERIAL), flags
    assert serial_now == NEW_SERIAL
    assert flags["energy_source"] == "register"
    assert not flags["end_estimated"] and not flags["late_register"], flags
    # What went through the two meters during the session, less at most one poll interval
    # at the exchange; never more.
    true_wh = old_wh + new_wh
    assert true_wh - STEP_WH * POLL_S <= rec["energy_wh"] <= true_wh, (rec["energy_wh"], true_wh)
    assert true_wh - STEP_WH * POLL_S <= rec["energy_wh"] + unbilled <= true_wh, \
        (rec["energy_wh"], unbilled, true_wh)
