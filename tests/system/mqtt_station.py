"""A minimal station for the MQTT system tests: MqttLink + Outbox + a recording target in a
real-time loop. Runs on the MicroPython unix port and on CPython (cwd = repository root).

    micropython tests/system/mqtt_station.py OPTIONS.json
    micropython tests/system/mqtt_station.py '{"config": {...}, "station": "cp-1", ...}'

(The unix port dies on command-line arguments of 255 characters or more, so options of
any size go in a file.)

Options (JSON): config (Config values), station, store (outbox directory), sessions (records
put at start), status (dict), telemetry_every_ms, loop_ms, seconds (0 = until killed),
stats_every_ms, steps (stop after this many steps), sim_step_ms (advance a simulated clock by
this much per step instead of reading the real one), clock ("real": UTC from time.time();
absent: the clock is not set). The executed-commands ledger is kept in the store.

Prints one line per fact, flushed at once:  READY | CALL <json> | ACKED <kind> <id> |
STATS <json> | DONE <json>
"""
import json
import sys

sys.path.insert(0, "tests/unit")

from firmware.compat import sleep_ms, ticks_add, ticks_diff, ticks_ms  # noqa: E402
from firmware.config import Config  # noqa: E402
from firmware.ledger import Ledger  # noqa: E402
from firmware.mqtt_link import MqttLink  # noqa: E402
from firmware.outbox import Outbox  # noqa: E402
from firmware.storage import Journal, Store  # noqa: E402
from mqtt_doubles import RecordingTarget  # noqa: E402


def say(*parts):
    sys.stdout.write(" ".join(parts) + "\n")
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


class PrintingTarget(RecordingTarget):
    def _done(self, name, *args):
        say("CALL", json.dumps([name] + list(args)))
        return RecordingTarget._done(self, name, *args)

    def cmd_get_config(self, keys):
        say("CALL", json.dumps(["get_config", keys]))
        return RecordingTarget.cmd_get_config(self, keys)


def main(opts):
    values = dict(opts.get("config", {}))
    values.setdefault("mqtt_boot_spread_s", 0)     # connect at once unless a test asks
    cfg = Config(values)
    store = Store(opts.get("store", "build/mqtt-station"))
    outbox = Outbox(Journal(store, "outbox"), capacity=cfg["outbox_capacity"],
                    window=cfg["outbox_window"], resend_ms=cfg["outbox_resend_s"] * 1000,
                    on_ack=lambda kind, rid: say("ACKED", kind, str(rid)))
    target = PrintingTarget(cfg)
    wall = None
    if opts.get("clock") == "real":
        import time

        def wall():
            return int(time.time())
    link = MqttLink(cfg, opts.get("station", "cp-test"), outbox, target, wall_time=wall,
                    ledger=Ledger(store))
    link.publish_status(opts.get("status", {"state": "A"}))
    for rec in opts.get("sessions", []):
        outbox.put("session", rec)
    loop_ms = opts.get("loop_ms", 10)
    sim = opts.get("sim_step_ms", 0)
    seconds = opts.get("seconds", 0)
    max_steps = opts.get("steps", 0)
    tele_every = opts.get("telemetry_every_ms", 0)
    stats_every = opts.get("stats_every_ms", 500)
    start = now = ticks_ms()
    last_stats = now
    last_tele = now
    steps = 0
    say("READY")
    while True:
        now = ticks_add(now, sim) if sim else ticks_ms()
        link.step(now)
        steps += 1
        if tele_every and ticks_diff(now, last_tele) >= tele_every:
            last_tele = now
            link.publish_telemetry({"power_w": steps % 11000, "steps": steps}, force=True)
        if ticks_diff(now, last_stats) >= stats_every:
            last_stats = now
            st = link.stats()
            st["steps"] = steps
            st["pending"] = len(outbox)
            say("STATS", json.dumps(st))
        if max_steps and steps >= max_steps:
            break
        if seconds and ticks_diff(now, start) >= seconds * 1000:
            break
        if loop_ms:
            sleep_ms(loop_ms)
    st = link.stats()
    st["steps"] = steps
    st["pending"] = len(outbox)
    st["state_now"] = link.state
    say("DONE", json.dumps(st))
    link.close()


def _options(arg):
    if arg.startswith("{"):
        return json.loads(arg)
    with open(arg) as f:
        return json.load(f)


main(_options(sys.argv[1]))
