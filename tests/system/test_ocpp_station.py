"""The station's OCPP 1.6J backend against a real central system (the `ocpp` library over a
`websockets` server), the station running on the ESP32 stand-in in simulated time."""
import asyncio

import pytest

from ocpp.v16 import call

from ocpp_cs import IDENTITY, CentralSystem, Station


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_boot_rfid_session_with_meter_values(tmp_dir):
    async def scenario():
        cs = CentralSystem()
        port = await cs.start()
        st = await Station.start(tmp_dir, "ws://127.0.0.1:%d/ocpp" % port,
                                 config={"ocpp_meter_interval_s": 10})
        try:
            snap = await st.run(20000, until="online")
            assert snap["online"]
            await st.run(2000)
            boot = cs.actions("BootNotification")
            assert len(boot) == 1 and boot[0]["chargePointModel"]
            assert cs.auth_seen[0].startswith("Basic ")
            status = cs.actions("StatusNotification")
            assert {(s["connectorId"], s["status"]) for s in status} == {(0, "Available"),
                                                                         (1, "Available")}
            await st.do("ev", plugged=True, charge=False)
            await st.run(2000)
            assert cs.actions("StatusNotification")[-1]["status"] == "Preparing"
            await st.do("tag", id="CARD-OK")
            snap = await st.run(10000, until="tx")
            await st.do("ev", plugged=True, charge=True)
            await st.run(10000, until="contactor")
            await st.run(35000)
            await st.do("ev", plugged=False)
            snap = await st.run(20000, until="delivered")
            assert snap["tx"] is None
            tx = cs.tx_calls()
            assert [a for a, _ in tx][0] == "StartTransaction"
            assert [a for a, _ in tx][-1] == "StopTransaction"
            start = tx[0][1]
            stop = tx[-1][1]
            assert start["idTag"] == "CARD-OK" and start["meterStart"] == 1000
            assert stop["reason"] == "EVDisconnected" and stop["transactionId"] == 1001
            assert stop["meterStop"] > start["meterStart"]
            mv = [p for a, p in tx if a == "MeterValues"]
            assert len(mv) >= 3
            for p in mv:
                assert p["transactionId"] == 1001
                names = {v["measurand"] for v in p["meterValue"][0]["sampledValue"]}
                assert names == {"Energy.Active.Import.Register", "Power.Active.Import",
                                 "Current.Import", "Voltage"}
            assert cs.actions("Authorize") == [{"idTag": "CARD-OK"}]
            seen = [s["status"] for s in cs.actions("StatusNotification") if s["connectorId"] == 1]
            assert "Charging" in seen and seen[-1] == "Available"
            assert snap["stats"]["errors_in"] == 0 and snap["service_errors"] == 0
        finally:
            await st.close()
            await cs.stop()
    run(scenario())
