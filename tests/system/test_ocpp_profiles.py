"""OCPP 1.6J beyond the core against the `ocpp` library as central system, the station on the
ESP32 stand-in in simulated time: the Local Authorization List authorizing while the central
system is down, and clock-aligned meter values."""
import asyncio

from ocpp.v16 import call
from ocpp.v16.datatypes import AuthorizationData, IdTagInfo

from ocpp_cs import outage, remote


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


def listed(tag, status="Accepted"):
    return AuthorizationData(id_tag=tag, id_tag_info=IdTagInfo(status=status))


def test_local_list_authorizes_while_the_central_system_is_down(ocpp):
    async def scenario():
        async with ocpp(config={"ocpp_meter_interval_s": 10,
                                "offline_policy": "local_list"}) as (cs, st):
            await st.run(20000, until="online")
            assert (await remote(cs, st, call.GetLocalListVersion())).list_version == 0
            res = await remote(cs, st, call.SendLocalList(
                list_version=1, update_type="Full",
                local_authorization_list=[listed("CARD-LOCAL"), listed("CARD-BLOCKED", "Blocked")]))
            assert res.status == "Accepted"
            res = await remote(cs, st, call.SendLocalList(
                list_version=2, update_type="Differential",
                local_authorization_list=[listed("CARD-LATE")]))
            assert res.status == "Accepted"
            res = await remote(cs, st, call.SendLocalList(
                list_version=2, update_type="Differential",
                local_authorization_list=[listed("CARD-NEVER")]))
            assert res.status == "VersionMismatch"
            assert (await remote(cs, st, call.GetLocalListVersion())).list_version == 2

            await outage(cs, st)
            await st.run(5000, until="offline")
            await st.do("ev", plugged=True, charge=True)
            # Offline: a blocked card and an unknown one are refused, the listed one starts.
            for tag in ("CARD-BLOCKED", "CARD-UNKNOWN", "CARD-NEVER"):
                await st.do("tag", id=tag)
                snap = await st.run(3000)
                assert snap["tx"] is None and not snap["authorized"], tag
            await st.do("tag", id="card-local")          # idTags are case-insensitive
            snap = await st.run(5000, until="contactor")
            assert snap["tx"] is not None and snap["tx_id"] is None
            await st.run(25000)
            await st.do("ev", plugged=False)
            snap = await st.run(3000)
            assert snap["pending"] >= 4 and not snap["online"]
            offline_calls = len(cs.calls)

            await cs.start(cs.port)
            snap = await st.run(60000, until="delivered")
            later = cs.calls[offline_calls:]
            assert all(a != "Authorize" for a, _ in later)
            tx = [(a, p) for a, p in later
                  if a in ("StartTransaction", "MeterValues", "StopTransaction")]
            kinds = [a for a, _ in tx]
            assert kinds[0] == "StartTransaction" and kinds[-1] == "StopTransaction"
            assert set(kinds[1:-1]) == {"MeterValues"} and len(kinds) >= 4
            assert tx[0][1]["idTag"] == "card-local" and tx[0][1]["meterStart"] == 1000
            assert [p["transactionId"] for _, p in tx[1:]] == [1001] * (len(tx) - 1)
            assert tx[-1][1]["reason"] == "EVDisconnected"
            stamps = [p["meterValue"][0]["timestamp"] if a == "MeterValues" else p["timestamp"]
                      for a, p in tx]
            assert stamps == sorted(stamps)
            assert len({str(p) for _, p in tx}) == len(tx)
            assert snap["stats"]["tx_dropped"] == 0 and snap["stats"]["errors_in"] == 0
            # The list outlives the outage; disabling it reports -1 and refuses updates.
            assert (await remote(cs, st, call.GetLocalListVersion())).list_version == 2
            res = await remote(cs, st, call.ChangeConfiguration(key="LocalAuthListEnabled",
                                                                value="false"))
            assert res.status == "Accepted"
            assert (await remote(cs, st, call.GetLocalListVersion())).list_version == -1
            res = await remote(cs, st, call.SendLocalList(list_version=3, update_type="Full"))
            assert res.status == "NotSupported"
    run(scenario())


def test_local_pre_authorize_starts_without_authorize(ocpp):
    async def scenario():
        async with ocpp(config={"ocpp_local_pre_authorize": True}) as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.SendLocalList(
                list_version=5, update_type="Full",
                local_authorization_list=[listed("CARD-LOCAL")]))
            assert res.status == "Accepted"
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-LOCAL")
            snap = await st.run(10000, until="tx")
            assert cs.actions("Authorize") == []
            assert cs.actions("StartTransaction")[0]["idTag"] == "CARD-LOCAL"
            assert snap["tx_id"] == 1001
    run(scenario())


def test_clock_aligned_meter_values_at_the_utc_boundaries(ocpp):
    # The simulated station's clock starts at 2026-01-05T08:00:00Z (tools/pilotsim/simboard.py).
    async def scenario():
        async with ocpp(config={"ocpp_meter_interval_s": 0}) as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.ChangeConfiguration(key="ClockAlignedDataInterval",
                                                                value="30"))
            assert res.status == "Accepted"
            res = await remote(cs, st, call.ChangeConfiguration(
                key="MeterValuesAlignedData", value="Energy.Active.Import.Register,Voltage"))
            assert res.status == "Accepted"
            snap = await st.run(35000)
            # Outside a transaction: connector 0, no transactionId.
            idle = cs.actions("MeterValues")
            assert idle and all(p["connectorId"] == 0 and "transactionId" not in p
                                for p in idle)
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            await st.run(10000, until="tx")
            n_idle = len(cs.actions("MeterValues"))
            await st.run(65000)
            await st.do("ev", plugged=False)
            snap = await st.run(20000, until="delivered")
            mv = cs.actions("MeterValues")
            in_tx = mv[n_idle:]
            assert len(in_tx) >= 2
            for p in mv:
                v = p["meterValue"][0]
                assert v["timestamp"][17:] in ("00Z", "30Z"), v["timestamp"]
                assert {s["context"] for s in v["sampledValue"]} == {"Sample.Clock"}
                assert {s["measurand"] for s in v["sampledValue"]} == {
                    "Energy.Active.Import.Register", "Voltage"}
            for p in in_tx:
                assert p["transactionId"] == 1001 and p["connectorId"] == 1
            stamps = [p["meterValue"][0]["timestamp"] for p in mv]
            assert stamps == sorted(set(stamps))       # one per boundary, none twice
            # Consecutive samples of the transaction are one interval apart.
            secs = [int(s[14:16]) * 60 + int(s[17:19]) for s in stamps[n_idle:]]
            assert all(b - a == 30 for a, b in zip(secs, secs[1:]))
            assert snap["stats"]["errors_in"] == 0
    run(scenario())


def test_authorization_cache_starts_offline_until_cleared(ocpp):
    # OCPP 1.6 3.5.1: a card the central system accepted online starts offline from the
    # Authorization Cache (LocalAuthorizeOffline); ClearCache takes that away.
    async def scenario():
        async with ocpp(config={"offline_policy": "local_list"}) as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.GetConfiguration(key=["AuthorizationCacheEnabled"]))
            assert res.configuration_key == [{"key": "AuthorizationCacheEnabled",
                                              "readonly": False, "value": "true"}]
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")                # Authorize: Accepted, cached
            await st.run(10000, until="tx")
            await st.do("ev", plugged=False)
            await st.run(3000, until="no_tx")
            snap = await st.run(20000, until="delivered")
            assert len(cs.actions("Authorize")) == 1
            assert [p["transactionId"] for p in cs.actions("StopTransaction")] == [1001]
            assert snap["stats"]["auth_cache_entries"] == 1

            await outage(cs, st)
            await st.run(5000, until="offline")
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OTHER")             # never answered for: refused
            snap = await st.run(3000)
            assert snap["tx"] is None and not snap["authorized"]
            await st.do("tag", id="card-ok")                # from the cache, case-insensitive
            snap = await st.run(5000, until="contactor")
            assert snap["tx"] is not None and snap["tx_id"] is None and not snap["online"]
            await st.run(5000)
            await st.do("ev", plugged=False)
            await st.run(3000, until="no_tx")
            offline_calls = len(cs.calls)

            await cs.start(cs.port)
            snap = await st.run(60000, until="delivered")
            later = cs.calls[offline_calls:]
            assert all(a != "Authorize" for a, _ in later)
            starts = [p for a, p in later if a == "StartTransaction"]
            assert len(starts) == 1 and starts[0]["idTag"] == "card-ok"
            stops = [p for a, p in later if a == "StopTransaction"]
            assert [p["transactionId"] for p in stops] == [1002]
            assert snap["stats"]["tx_dropped"] == 0 and snap["stats"]["errors_in"] == 0

            assert (await remote(cs, st, call.ClearCache())).status == "Accepted"
            snap = await st.run(1000)
            assert snap["stats"]["auth_cache_entries"] == 0
            await outage(cs, st)
            await st.run(5000, until="offline")
            await st.do("ev", plugged=True, charge=True)
            await st.do("tag", id="CARD-OK")
            snap = await st.run(5000)
            assert snap["tx"] is None and not snap["authorized"] and not snap["contactor"]
    run(scenario())
