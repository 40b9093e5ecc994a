"""The central system's operations against the station (OCPP 1.6J core and remote trigger),
and the boot registration states, with the `ocpp` library as the central system."""
import asyncio

import pytest
from ocpp.exceptions import NotSupportedError
from ocpp.v16 import call

from ocpp_cs import CentralSystem, remote


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_configuration_availability_reset_and_the_rest(ocpp):
    async def scenario():
        async with ocpp() as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.GetConfiguration())
            keys = {k["key"]: k for k in res.configuration_key}
            assert (keys["SupportedFeatureProfiles"]["value"]
                    == "Core,LocalAuthListManagement,RemoteTrigger,SmartCharging")
            assert "AuthorizationKey" not in keys
            res = await remote(cs, st, call.ChangeConfiguration(key="MeterValueSampleInterval",
                                                                value="15"))
            assert res.status == "Accepted"
            res = await remote(cs, st, call.ChangeConfiguration(key="NumberOfConnectors",
                                                                value="2"))
            assert res.status == "Rejected"
            res = await remote(cs, st, call.ChangeConfiguration(key="Bogus", value="2"))
            assert res.status == "NotSupported"
            res = await remote(cs, st, call.GetConfiguration(key=["MeterValueSampleInterval",
                                                                  "Bogus"]))
            assert res.configuration_key[0]["value"] == "15" and res.unknown_key == ["Bogus"]
            snap = await st.do("config", keys=["ocpp_meter_interval_s"])
            assert snap["cfg"] == {"ocpp_meter_interval_s": 15}
            assert (await remote(cs, st, call.ClearCache())).status == "Accepted"
            res = await remote(cs, st, call.DataTransfer(vendor_id="com.example"))
            assert res.status == "UnknownVendorId"
            res = await remote(cs, st, call.UnlockConnector(connector_id=1))
            assert res.status == "NotSupported"
            with pytest.raises(NotSupportedError):
                await remote(cs, st, call.ReserveNow(connector_id=1, expiry_date="2030-01-01T00:00:00Z",
                                                     id_tag="X", reservation_id=1),
                             suppress=False)
            with pytest.raises(NotSupportedError):
                await remote(cs, st, call.GetDiagnostics(location="ftp://x/"), suppress=False)
            # Frames the library would not send: an unknown action, a bad value, no JSON.
            for raw in ('[2,"u1","FlyToTheMoon",{}]', '[2,"u2","Reset",{"type":"Sideways"}]',
                        '[2,"u3","RemoteStartTransaction",{}]', 'garbage'):
                await cs.cp._connection.send(raw)
            snap = await st.run(1000, paced=True)
            errors = {f[1]: f[2] for f in cs.frames if f[0] == 4 and f[1].startswith("u")}
            assert errors == {"u1": "NotImplemented", "u2": "PropertyConstraintViolation",
                              "u3": "OccurenceConstraintViolation"}
            assert snap["stats"]["malformed"] == 1
            n = len(cs.actions("Heartbeat"))
            res = await remote(cs, st, call.TriggerMessage(requested_message="Heartbeat"))
            assert res.status == "Accepted"
            await st.run(2000, paced=True)
            assert len(cs.actions("Heartbeat")) == n + 1

            # Inoperative during a transaction is scheduled until it ends.
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            await st.run(10000, until="tx")
            res = await remote(cs, st, call.ChangeAvailability(connector_id=1, type="Inoperative"))
            assert res.status == "Scheduled"
            await st.do("ev", plugged=False)
            snap = await st.run(10000, until="delivered")
            await st.run(2000)
            assert snap["available"] is False
            assert cs.actions("StatusNotification")[-1]["status"] == "Unavailable"
            res = await remote(cs, st, call.ChangeAvailability(connector_id=0, type="Operative"))
            assert res.status == "Accepted"
            await st.run(2000)
            assert cs.actions("StatusNotification")[-1]["status"] == "Available"

            # Reset: the reply, then a clean restart and a new BootNotification.
            res = await remote(cs, st, call.Reset(type="Soft"))
            assert res.status == "Accepted"
            await st.run(3000)
            snap = await st.run(30000, until="online")
            assert snap["boots"] == 2 and len(cs.actions("BootNotification")) == 2
            snap = await st.do("config", keys=["ocpp_meter_interval_s"])
            assert snap["cfg"] == {"ocpp_meter_interval_s": 15}
    run(scenario())


def test_boot_pending_then_accepted_and_a_wrong_password_refused(ocpp, tmp_dir):
    async def scenario():
        cs = CentralSystem(interval=20)
        cs.boot_status = ["Pending", "Rejected"]
        async with ocpp(cs=cs) as (cs, st):
            snap = await st.run(5000)
            assert len(cs.actions("BootNotification")) == 1 and not snap["online"]
            # Nothing but BootNotification while not accepted; it comes again after the interval.
            assert {a for a, _ in cs.calls} == {"BootNotification"}
            snap = await st.run(60000, until="online")
            boots = cs.actions("BootNotification")
            assert len(boots) == 3
            first = [f for f in cs.frames if f[0] == 2]
            assert [f[2] for f in first[:3]] == ["BootNotification"] * 3
        cs2 = CentralSystem(password="another-password")
        async with ocpp(tmp=tmp_dir + "/b", cs=cs2) as (cs2, st):
            snap = await st.run(5000)
            assert not snap["online"] and cs2.calls == []
            assert snap["stats"]["error"] == "handshake: HTTP 401"
    run(scenario())
