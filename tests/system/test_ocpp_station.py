"""The station's OCPP 1.6J backend against a real central system (the `ocpp` library over a
`websockets` server), the station running on the ESP32 stand-in in simulated time."""
import asyncio

import pytest

from ocpp.v16 import call

from tools.devicefiles import HEAP_GROWN
from ocpp_cs import outage, remote


# The MQTT backend's modules (its link, command set, outbox, ledger): an OCPP station
# imports none of them.
MQTT_ONLY = {"firmware.mqtt_link", "firmware.commands", "firmware.messages", "firmware.owner",
             "firmware.ledger", "firmware.outbox", "firmware.backend.mqtt", "umqtt.simple",
             "firmware.resolver"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_boot_rfid_session_with_meter_values(ocpp):
    async def scenario():
        # The ESP32's heap without PSRAM once grown (tools/devicefiles.py HEAP_GROWN).
        async with ocpp(config={"ocpp_meter_interval_s": 10}, heap=HEAP_GROWN) as (cs, st):
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
            # What only the MQTT backend needs stayed off the heap through the whole session.
            modules = set((await st.do("modules"))["modules"])
            assert "firmware.ocpp16.backend" in modules and "firmware.station" in modules
            assert not modules & MQTT_ONLY, modules & MQTT_ONLY
    run(scenario())


def test_remote_start_and_stop(ocpp):
    async def scenario():
        async with ocpp() as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.RemoteStartTransaction(id_tag="REMOTE-1",
                                                                   connector_id=1))
            assert res.status == "Accepted"
            await st.do("ev", plugged=True, charge=True)
            snap = await st.run(10000, until="tx")
            await st.run(10000, until="contactor")
            tx_id = snap["tx_id"]
            # A second remote start while the connector is in a transaction is refused.
            res = await remote(cs, st, call.RemoteStartTransaction(id_tag="REMOTE-2"))
            assert res.status == "Rejected"
            res = await remote(cs, st, call.RemoteStopTransaction(transaction_id=tx_id + 7))
            assert res.status == "Rejected"
            res = await remote(cs, st, call.RemoteStopTransaction(transaction_id=tx_id))
            assert res.status == "Accepted"
            snap = await st.run(20000, until="delivered")
            assert snap["tx"] is None
            await st.run(8000, until="no_contactor")
            await st.run(2000)
            start = cs.actions("StartTransaction")
            stop = cs.actions("StopTransaction")
            assert [s["idTag"] for s in start] == ["REMOTE-1"]
            assert [(s["transactionId"], s["reason"]) for s in stop] == [(tx_id, "Remote")]
            assert cs.actions("StatusNotification")[-1]["status"] == "Finishing"
            await st.do("ev", plugged=False)
            await st.run(3000)
            assert cs.actions("StatusNotification")[-1]["status"] == "Available"
            assert cs.actions("Authorize") == []
    run(scenario())


def test_central_system_outage_mid_session_delivers_every_message_in_order(ocpp):
    async def scenario():
        async with ocpp(config={"ocpp_meter_interval_s": 10,
                                "offline_policy": "allow_all"}) as (cs, st):
            await st.run(20000, until="online")
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            snap = await st.run(10000, until="tx")
            assert snap["tx_id"] == 1001
            await st.run(15000)
            online_calls = len(cs.tx_calls())
            await outage(cs, st)
            await st.run(5000, until="offline")
            # Transaction 1 ends offline; transaction 2 starts and ends offline.
            await st.run(25000)
            await st.do("ev", plugged=False)
            await st.run(3000)
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OFFLINE")
            await st.run(5000, until="contactor")
            await st.run(25000)
            await st.do("ev", plugged=False)
            snap = await st.run(3000)
            assert snap["pending"] >= 8
            await cs.start(cs.port)
            snap = await st.run(120000, until="delivered")
            tx = cs.tx_calls()
            later = tx[online_calls:]
            kinds = [a for a, _ in later]
            assert kinds[-1] == "StopTransaction" and kinds.count("StopTransaction") == 2
            first_stop = kinds.index("StopTransaction")
            assert set(kinds[:first_stop]) == {"MeterValues"}
            assert kinds[first_stop + 1] == "StartTransaction"
            assert set(kinds[first_stop + 2:-1]) == {"MeterValues"}
            ids = [p.get("transactionId") for _, p in later]
            assert ids[:first_stop + 1] == [1001] * (first_stop + 1)
            assert ids[first_stop + 2:] == [1002] * (len(ids) - first_stop - 2)
            assert later[first_stop][1]["reason"] == "EVDisconnected"
            assert later[first_stop + 1][1]["idTag"] == "CARD-OFFLINE"
            # Each message once, timestamps and registers never going back.
            stamps = [p["meterValue"][0]["timestamp"] if a == "MeterValues" else p["timestamp"]
                      for a, p in tx]
            assert stamps == sorted(stamps)
            assert len({str(p) for _, p in tx}) == len(tx)
            assert snap["stats"]["tx_dropped"] == 0 and snap["stats"]["errors_in"] == 0
    run(scenario())


def test_power_cut_mid_transaction_stops_it_as_power_loss_after_the_restart(ocpp):
    async def scenario():
        async with ocpp(config={"ocpp_meter_interval_s": 10}) as (cs, st):
            await st.run(20000, until="online")
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            snap = await st.run(10000, until="tx")
            tx_id = snap["tx_id"]
            await st.run(10000, until="contactor")
            snap = await st.run(25000)
            wh_at_cut = snap["wh"]
            snap = await st.do("powercut")
            assert snap["boots"] == 2
            snap = await st.run(30000, until="delivered")
            await st.run(2000)
            assert len(cs.actions("BootNotification")) == 2
            stop = cs.actions("StopTransaction")
            assert len(stop) == 1
            assert stop[0]["transactionId"] == tx_id and stop[0]["reason"] == "PowerLoss"
            assert stop[0]["meterStop"] == wh_at_cut
            assert len(cs.actions("StartTransaction")) == 1
            # The EV is still plugged in: no new transaction without a new authorization.
            assert snap["tx"] is None and not snap["contactor"]
    run(scenario())
