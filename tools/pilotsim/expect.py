"""A scenario's "expect" block checked against a run (docs/scenarios.md, "Expectations")."""
from tools.pilotsim import orchestrate

# Sequences only a backend can start: not expected when the run had no broker.
BROKER_SEQUENCES = ("limit_applied", "network_stall_detected")


def check(res):
    """The list of unmet expectations (empty when all hold)."""
    exp = res.scenario.expect
    problems = []
    end = res.end
    if end is None:
        return ["the run did not reach its end (see stderr)"]
    if not res.ticks():
        # Nothing was observed: every expectation below would hold vacuously.
        return ["the trace has no tick records: nothing was observed"]
    faults = res.faults_seen()
    for f in exp.get("faults", []):
        if f not in faults:
            problems.append("fault %s never raised (seen: %s)" % (f, ", ".join(faults) or "none"))
    if exp.get("no_faults") and faults:
        problems.append("expected no faults, saw %s" % ", ".join(faults))
    states = res.states_seen()
    for s in exp.get("states", []):
        if s not in states:
            problems.append("state %s never reached (seen: %s)" % (s, ", ".join(states)))
    seqs = set(c.seq for c in res.checks)
    for s in exp.get("sequences", []):
        if s not in seqs and (res.broker or s not in BROKER_SEQUENCES):
            problems.append("sequence %s not seen (seen: %s)" % (s, ", ".join(sorted(seqs))))
    e = end.get("energy_wh", 0)
    if "energy_wh_min" in exp and e < exp["energy_wh_min"]:
        problems.append("energy %d Wh < expected minimum %d Wh" % (e, exp["energy_wh_min"]))
    if "energy_wh_max" in exp and e > exp["energy_wh_max"]:
        problems.append("energy %d Wh > expected maximum %d Wh" % (e, exp["energy_wh_max"]))
    if res.broker and exp.get("session_reasons"):
        reasons = [p.get("data", {}).get("stop_reason")
                   for p in orchestrate.session_records(res.records)]
        for want in exp["session_reasons"]:
            if want not in reasons:
                problems.append("no session record with reason %s (seen: %s)"
                                % (want, ", ".join(str(r) for r in reasons) or "none"))
    if res.broker:
        tr = orchestrate.mqtt_traffic(res.records)
        n = tr["from_station"][0]
        if "min_mqtt_messages" in exp and n < exp["min_mqtt_messages"]:
            problems.append("only %d MQTT messages from the station (expected >= %d)"
                            % (n, exp["min_mqtt_messages"]))
        sent = [r.get("id") for r in res.records if r.get("k") == "backend" and "id" in r]
        replies = {}
        for r in res.records:
            if r.get("k") == "mqtt" and r.get("topic") == "reply" \
                    and isinstance(r.get("payload"), dict):
                replies[r["payload"].get("id")] = r["payload"]
        must_fail = exp.get("replies_error", [])
        for cid in must_fail:
            rep = replies.get(cid)
            if rep is None:
                problems.append("command %s got no reply (expected a refusal)" % cid)
            elif rep.get("ok"):
                problems.append("command %s was accepted (expected a refusal)" % cid)
        if exp.get("replies_ok"):
            for cid in [c for c in sent if c not in must_fail]:
                rep = replies.get(cid)
                if rep is None:
                    problems.append("command %s got no reply" % cid)
                elif not rep.get("ok"):
                    problems.append("command %s refused: %s" % (cid, rep.get("error")))
    return problems
