"""OCPP 1.6 Smart Charging against the `ocpp` library as central system, the station on the
ESP32 stand-in in simulated time: a profile's limit reaches the pilot's PWM within one tick
of its start, a TxDefaultProfile outlives a power cut, GetCompositeSchedule answers what
the station applies (schema-checked)."""
import asyncio
from datetime import datetime, timezone

from ocpp.messages import CallResult, validate_payload
from ocpp.v16 import call

from firmware.pilot import duty_for_current
from firmware.station import TICK_MS
from ocpp_cs import remote
from tools.devicefiles import HEAP_GROWN

SIM_EPOCH = 1767600000        # tools/pilotsim/simboard.py: the wall clock at board time 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period(q):
    out = {"startPeriod": q[0], "limit": q[1]}
    if len(q) > 2:
        out["numberPhases"] = q[2]
    return out


def profile(pid, purpose, periods, stack=0, **kw):
    sched = {"chargingRateUnit": kw.pop("unit", "A"),
             "chargingSchedulePeriod": [_period(q) for q in periods]}
    if "start" in kw:
        sched["startSchedule"] = iso(kw.pop("start"))
    if "min_rate" in kw:
        sched["minChargingRate"] = kw.pop("min_rate")
    out = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
           "chargingProfileKind": "Absolute", "chargingSchedule": sched}
    out.update(kw)
    return out


async def composite(cs, st, conn, duration, unit):
    res = await remote(cs, st, call.GetCompositeSchedule(connector_id=conn, duration=duration,
                                                         charging_rate_unit=unit))
    # The answer as sent, checked against GetCompositeSchedule.conf's schema once more.
    frame = [f for f in cs.frames if f[0] == 3 and "chargingSchedule" in f[2]][-1]
    await validate_payload(CallResult(frame[1], frame[2], "GetCompositeSchedule"), "1.6")
    assert res.status == "Accepted", res
    s = frame[2]["chargingSchedule"]
    assert s["chargingRateUnit"] == unit and s["duration"] == duration
    return [(p["startPeriod"], p["limit"]) for p in s["chargingSchedulePeriod"]]


async def charging_session(cs, st):
    await st.run(20000, until="online")
    await st.do("ev", plugged=True, charge=False)
    await st.do("tag", id="CARD-OK")
    await st.run(10000, until="tx")
    await st.do("ev", plugged=True, charge=True)
    return await st.run(10000, until="contactor")


def test_tx_profile_lowers_the_pwm_within_one_tick_of_its_start(ocpp):
    async def scenario():
        # In the ESP32's heap without PSRAM once grown, as the RFID session of
        # test_ocpp_station.py.
        async with ocpp(config={"max_current_ma": 16000}, heap=HEAP_GROWN) as (cs, st):
            snap = await charging_session(cs, st)
            await st.run(2000)
            snap = await st.run(TICK_MS)
            assert snap["offered_ma"] == 16000 and snap["duty"] == duty_for_current(16000)
            tx_id = snap["tx_id"]
            # 10 A from 8 s ahead (whole seconds of the station's clock) for this transaction.
            start = snap["wall"] + 8
            res = await remote(cs, st, call.SetChargingProfile(connector_id=1,
                               cs_charging_profiles=profile(5, "TxProfile", [(0, 10)],
                                                            start=start, transactionId=tx_id)))
            assert res.status == "Accepted"
            start_ms = (start - SIM_EPOCH) * 1000
            snap = await st.run(0)
            assert snap["t"] < start_ms - TICK_MS and snap["offered_ma"] == 16000
            snap = await st.run(start_ms - TICK_MS - snap["t"])
            assert snap["t"] == start_ms - TICK_MS
            trace = []
            for _ in range(4):
                snap = await st.run(TICK_MS)
                trace.append((snap["t"] - TICK_MS, snap["offered_ma"], snap["duty"]))
            # (the board time of each tick, the offer and the PWM after it): the tick at the
            # start hands the limit over, the next one drives the pilot with it.
            assert trace[:3] == [(start_ms - TICK_MS, 16000, duty_for_current(16000)),
                                 (start_ms, 16000, duty_for_current(16000)),
                                 (start_ms + TICK_MS, 10000, duty_for_current(10000))], trace
            assert await composite(cs, st, 1, 3600, "A") == [(0, 10.0)]
            assert await composite(cs, st, 1, 600, "W") == [(0, 6900.0)]
            # A ChargePointMaxProfile under 6 A: nothing offered, the EV suspended by the EVSE.
            res = await remote(cs, st, call.SetChargingProfile(connector_id=0,
                               cs_charging_profiles=profile(6, "ChargePointMaxProfile",
                                                            [(0, 4)])))
            assert res.status == "Accepted"
            snap = await st.run(15000, until="no_contactor")
            assert snap["offered_ma"] == 0 and snap["tx_id"] == tx_id
            await st.run(3000)
            seen = [s["status"] for s in cs.actions("StatusNotification")
                    if s["connectorId"] == 1]
            assert seen[-1] == "SuspendedEVSE", seen
            assert await composite(cs, st, 0, 60, "A") == [(0, 4.0)]
            res = await remote(cs, st, call.ClearChargingProfile(id=6))
            assert res.status == "Accepted"
            snap = await st.run(15000, until="contactor")
            assert snap["offered_ma"] == 10000
            res = await remote(cs, st, call.ClearChargingProfile(id=6))
            assert res.status == "Unknown"
            # The transaction ends: its TxProfile goes with it.
            await st.do("ev", plugged=False)
            snap = await st.run(20000, until="delivered")
            assert await composite(cs, st, 1, 60, "A") == [(0, 16.0)]
            assert snap["profiles"] is None       # none left: the module left the heap too
            assert snap["stats"]["errors_in"] == 0 and snap["service_errors"] == 0
    run(scenario())


def test_tx_default_profile_survives_a_power_cut(ocpp):
    async def scenario():
        async with ocpp(config={"max_current_ma": 16000}) as (cs, st):
            await st.run(20000, until="online")
            res = await remote(cs, st, call.GetConfiguration(key=[
                "SupportedFeatureProfiles", "MaxChargingProfilesInstalled"]))
            assert [k["value"] for k in res.configuration_key] == [
                "Core,LocalAuthListManagement,RemoteTrigger,SmartCharging", "8"]
            res = await remote(cs, st, call.SetChargingProfile(connector_id=0,
                               cs_charging_profiles=profile(7, "TxDefaultProfile", [(0, 8)],
                                                            stack=1)))
            assert res.status == "Accepted"
            # Refused: a TxProfile without a transaction, a stackLevel beyond the key.
            res = await remote(cs, st, call.SetChargingProfile(connector_id=1,
                               cs_charging_profiles=profile(8, "TxProfile", [(0, 8)])))
            assert res.status == "Rejected"
            res = await remote(cs, st, call.SetChargingProfile(connector_id=0,
                               cs_charging_profiles=profile(9, "TxDefaultProfile", [(0, 8)],
                                                            stack=9)))
            assert res.status == "Rejected"
            snap = await st.do("powercut")
            assert snap["boots"] == 2
            snap = await charging_session(cs, st)
            await st.run(2000)
            snap = await st.run(TICK_MS)
            assert snap["offered_ma"] == 8000 and snap["duty"] == duty_for_current(8000)
            assert snap["profiles"] == 1
            assert await composite(cs, st, 1, 300, "A") == [(0, 8.0)]
            # The profile itself came back from flash, not only the limit it had set.
            res = await remote(cs, st, call.ClearChargingProfile(
                charging_profile_purpose="TxDefaultProfile", stack_level=1))
            assert res.status == "Accepted"
            snap = await st.run(3000)
            assert snap["offered_ma"] == 16000 and snap["profiles"] is None
            assert snap["stats"]["errors_in"] == 0 and snap["service_errors"] == 0
    run(scenario())


def test_clock_set_mid_schedule_and_the_evs_minimum_rate(ocpp):
    """OCPP 1.6 7.13 and 3.13: a schedule read from the station's clock follows that clock
    when NTP sets it mid-schedule (within a second); a limit under the schedule's
    minChargingRate pauses the charge instead of offering the EV less than it can use; a W
    limit counts the period's numberPhases."""
    async def scenario():
        async with ocpp(config={"max_current_ma": 16000}) as (cs, st):
            snap = await charging_session(cs, st)
            start = snap["wall"] - 10
            # 14 A, after an hour 10 A (under the EV's 12 A), after two hours 13 A.
            res = await remote(cs, st, call.SetChargingProfile(connector_id=1,
                               cs_charging_profiles=profile(
                                   3, "TxDefaultProfile", [(0, 14), (3600, 10), (7200, 13)],
                                   start=start, min_rate=12)))
            assert res.status == "Accepted"
            snap = await st.run(2000)
            assert snap["offered_ma"] == 14000 and snap["contactor"]
            # NTP sets the clock an hour on: the second period is in force within a second,
            # and 10 A is under the minimum rate: nothing offered, the contactor opens.
            t_set = snap["t"]
            await st.do("clock", shift_s=3600)
            snap = await st.run(1100)
            assert snap["offered_ma"] == 0 and snap["t"] - t_set <= 1100, snap
            snap = await st.run(15000, until="no_contactor")
            await st.run(3000)
            seen = [s["status"] for s in cs.actions("StatusNotification")
                    if s["connectorId"] == 1]
            assert seen[-1] == "SuspendedEVSE", seen
            assert await composite(cs, st, 1, 600, "A") == [(0, 0.0)]
            await st.do("clock", shift_s=3600)
            snap = await st.run(15000, until="contactor")
            assert snap["offered_ma"] == 13000
            # numberPhases 1: 3220 W on one phase is 14 A (on three it would be 4.6 A).
            res = await remote(cs, st, call.SetChargingProfile(connector_id=1,
                               cs_charging_profiles=profile(
                                   4, "TxDefaultProfile", [(0, 3220, 1)], stack=1,
                                   unit="W")))
            assert res.status == "Accepted"
            # (a raise of the offer reaches the charger a few seconds later)
            snap = await st.run(10000)
            assert snap["offered_ma"] == 14000
            assert await composite(cs, st, 1, 60, "W") == [(0, 3220.0)]
            assert snap["stats"]["errors_in"] == 0 and snap["service_errors"] == 0
    run(scenario())
