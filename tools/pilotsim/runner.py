"""The firmware side of a simulation: runs on the MicroPython unix port.

    micropython -m tools.pilotsim.runner RUN.json

RUN.json (written by the orchestrator, tools/pilotsim/orchestrate.py) holds the checked
scenario and where the peers are. This process builds a SimBoard, starts the real firmware
(firmware.station.Station) on it and plays the scenario's steps at their exact simulated
times between two control-loop iterations. It talks to the orchestrator over its stdio:

- stdout: one JSON object per line. Trace records have "k" (see docs/scenarios.md,
  "Trace"); requests have "req" and wait for one line on stdin ("ok" or "err REASON"):
  meter register updates, meter faults, network stalls. This lock-step keeps the meter's
  registers exactly in line with the simulated EV.
- The backend: this process publishes the scenario's commands to the broker itself (at their
  simulated time) and subscribes to the station's topics, so MQTT traffic lands in the trace
  with simulated timestamps.

Time: see SimBoard and docs/scenarios.md: simulated time runs as fast as the firmware
computes, except that it is paced 1:1 with wall time while a peer owes an answer (a Modbus
request in flight, a backend command not yet answered, the link coming up), so that the
firmware's Modbus and MQTT timeouts keep their meaning against real peers.
"""
import json
import sys
import time

from firmware import states
from tools.pilotsim import scenario as _scenario
from tools.pilotsim.model import (CABLE_OHMS, EVLoad, EnergyCounter, FrontEnd, MeterRefresh,
                                  PilotModel, S2_C, S2_D, S2_OPEN)
from tools.pilotsim.simboard import SimBoard, SimReset

HEARTBEAT_MS = 1000          # a trace record at least this often
METER_PUSH_MS = 500          # meter registers refreshed at least this often while energy flows
CMD_SETTLE_MS = 5000         # pace 1:1 at most this long waiting for a command's reply
ACK_SETTLE_MS = 2000         # pace 1:1 at most this long while records wait for an ack
END_DRAIN_MS = 300           # wall ms to collect messages still on their way at the end
CMD_DELIVERY_CAP_MS = 2000   # wall ms the clock is held for the broker to deliver a command
METER_WAIT_CAP_MS = 2000     # wall ms the clock is held for the meter peer's answer
LINK_SETTLE_MS = 3000        # pace 1:1 at most this long for the link to come up


def _wall_ms():
    return time.ticks_ms()


def _wall_diff(a, b):
    return time.ticks_diff(a, b)


class Channel:
    """Line-based JSON to the orchestrator; requests wait for its answer (lock-step)."""

    def __init__(self, out=None, inp=None):
        self.out = out or sys.stdout
        self.inp = inp or sys.stdin
        self.lines = 0

    def emit(self, record):
        self.out.write(json.dumps(record))
        self.out.write("\n")
        self.lines += 1

    def request(self, record):
        self.emit(record)
        if hasattr(self.out, "flush"):
            self.out.flush()
        answer = self.inp.readline()
        if not answer:
            raise RuntimeError("orchestrator went away")
        answer = answer.strip()
        if answer != "ok":
            raise RuntimeError("orchestrator refused %s: %s" % (record.get("req"), answer))


class PacedUart:
    """The meter's UART as the firmware sees it, in simulated time.

    The pymodbus peer answers in wall time; the firmware must see the answer when a real
    RS-485 line would deliver it. So the runner holds the simulated clock while a request
    is unanswered (`waiting()`), and once the answer is on the socket this stream keeps it
    invisible until request and answer have crossed the line at the configured baud rate
    (10 bits a character with 8N1, 11 with parity). Meter latency is then the same on every
    run and every machine, whatever the load.
    """

    def __init__(self, uart, board):
        self._u = uart
        self.board = board
        self.pending = False        # a request was written and its answer not yet read
        self.requests = 0
        self._sent_ms = 0
        self._sent_len = 0
        self._visible_ms = None     # simulated ms from which the answer may be read

    def _line_ms(self, nbytes):
        line = self.board.meter_line or (9600, "N")
        bits = 10 if line[1] == "N" else 11
        return nbytes * bits * 1000 // line[0] + 1

    def write(self, buf):
        self.pending = True
        self.requests += 1
        self._sent_ms = self.board.now_ms
        self._sent_len = len(buf)
        self._visible_ms = None
        return self._u.write(buf)

    def waiting(self):
        """True while the peer owes the answer to the last request."""
        return self.pending and self._visible_ms is None and not self._u.any()

    def give_up(self):
        # A peer that never answers: stop holding the clock (the firmware times out).
        self.pending = False

    def any(self):
        n = self._u.any()
        if not n:
            return 0
        if self._visible_ms is None:
            self._visible_ms = self._sent_ms + self._line_ms(self._sent_len + n)
        if self.board.now_ms < self._visible_ms:
            return 0
        return n

    def read(self, n=-1):
        if not self.any():
            return None
        data = self._u.read(n) if n != -1 else self._u.read()
        if data:
            self.pending = False
        return data

    def readinto(self, buf, n=None):
        if not self.any():
            return 0
        got = self._u.readinto(buf) if n is None else self._u.readinto(buf, n)
        if got:
            self.pending = False
        return got

    def flush(self):
        if hasattr(self._u, "flush"):
            self._u.flush()

    def set_de(self, on):
        if hasattr(self._u, "set_de"):
            self._u.set_de(on)


_TO_STATION = ("cmd", "ack")     # what the backend publishes; the rest is the station's


class Backend:
    """The scenario's side of MQTT: publishes commands, observes the station's topics."""

    def __init__(self, host, port, prefix, station_id, channel, now):
        from umqtt.simple import MQTTClient
        self.base = "%s/%s/" % (prefix, station_id)
        self.cmd_topic = self.base + "cmd"
        self.channel = channel
        self.now = now
        self.messages = 0
        self.bytes = 0
        self.replies = {}           # id -> reply payload (dict)
        self.seen_from_station = 0
        self.commands_sent = 0
        self.commands_seen = 0      # our own commands as the broker delivered them back
        self._n = 0
        self.client = MQTTClient(b"pilotsim-backend", host, port, keepalive=0)
        self.client.set_callback(self._on_msg)
        self.client.connect()
        self.client.subscribe((self.base + "#").encode())

    def _on_msg(self, topic, msg):
        topic = topic.decode()
        self.messages += 1
        self.bytes += len(topic) + len(msg)
        sub = topic[len(self.base):] if topic.startswith(self.base) else topic
        try:
            payload = json.loads(msg)
        except ValueError:
            payload = msg.decode() if isinstance(msg, bytes) else msg
        if sub not in _TO_STATION:
            self.seen_from_station += 1
        elif sub == "cmd":
            self.commands_seen += 1
        if sub == "reply" and isinstance(payload, dict) and "id" in payload:
            self.replies[payload["id"]] = payload
        if sub == "record" and isinstance(payload, dict) and "id" in payload:
            # As a backend does: acknowledge every record so the outbox can let it go.
            self.client.publish((self.base + "ack").encode(),
                                json.dumps({"v": 1, "ids": [payload["id"]]}).encode())
        self.channel.emit({"t": self.now(), "k": "mqtt", "topic": sub,
                           "dir": "to_station" if sub in _TO_STATION else "from_station",
                           "bytes": len(msg), "payload": payload})

    def poll(self):
        # Bounded: at most a handful of queued messages per control-loop iteration.
        for _ in range(8):
            if self.client.check_msg() is None:
                # check_msg returns None both for "nothing" and "handled"; stop when idle.
                if not self._readable():
                    break

    def _readable(self):
        try:
            import select
            p = select.poll()
            p.register(self.client.sock, select.POLLIN)
            return bool(p.poll(0))
        except (ImportError, OSError):
            return False

    def send(self, name, args, raw, cid):
        self._n += 1
        if cid is None:
            cid = "sim-%d" % self._n
        if raw is not None:
            payload = raw
        else:
            payload = json.dumps({"v": 1, "id": cid, "cmd": name, "args": args})
        self.client.publish(self.cmd_topic.encode(), payload.encode())
        self.commands_sent += 1
        return cid


class Runner:
    def __init__(self, run, channel=None, station_factory=None):
        self.run_cfg = run
        self.sc = _scenario.parse(run["scenario"], run["scenario"].get("name", "scenario"))
        self.channel = channel or Channel()
        sc = self.sc
        self.model = PilotModel()
        self.model.cable_ohms = CABLE_OHMS[sc.cable_a]
        self.model.update()
        self.board = SimBoard(model=self.model,
                              frontend=FrontEnd(seed=sc.seed, noise_mv=sc.noise_mv),
                              start_ms=sc.start_ticks, storage=run.get("storage", "data"))
        self.t0 = sc.start_ticks
        self.ev = EVLoad(phases=sc.phases, wanted_ma=sc.draw_ma, stop_ms=sc.stop_ms,
                         voltage_mv=230000)
        self.meter_start_wh = run.get("meter_start_wh", 0)
        self.energy = EnergyCounter(start_wh=self.meter_start_wh)
        self.meter_voltage_dv = 2300
        self.meter_fault = None
        self.uart = None
        if run.get("meter_port"):
            self.uart = PacedUart(self._open_meter(run["meter_port"]), self.board)
            self.board.attach_meter(self.uart)
        self.backend = None
        self.config = dict(sc.config)
        if run.get("broker_port"):
            self.config["mqtt_host"] = run.get("broker_host", "127.0.0.1")
            self.config["mqtt_port"] = run.get("station_broker_port") or run["broker_port"]
            self.backend = Backend(run.get("broker_host", "127.0.0.1"), run["broker_port"],
                                   self._cfg("mqtt_prefix"), self._cfg("station_id"),
                                   self.channel, self.sim_ms)
        self.speed = run.get("speed", 0)        # sim ms per wall ms; 0 = unlimited
        self._factory = station_factory or _station_factory
        self.station = self._factory(self.board, self.config)
        self.board.pacer = self._pace
        self._wall0 = _wall_ms()
        self._sim0 = 0
        self._cmd_wait = None       # (id, until sim ms) while a command is unanswered
        self._ack_since = None      # sim ms since which records wait for the backend's ack
        self.net_stalled = False
        self._link_until = LINK_SETTLE_MS if self.backend else 0
        self._last = None
        self._last_emit = -HEARTBEAT_MS
        self._refresh = MeterRefresh(METER_PUSH_MS)
        self.stats = {"ticks": 0, "restarts": 0, "meter_pushes": 0, "commands": 0,
                      "paced_ms": 0, "meter_gave_up": 0}

    def _cfg(self, key):
        from firmware.config import SCHEMA
        return self.config.get(key, SCHEMA[key][0])

    def _open_meter(self, port):
        from tools.tcpuart import TcpUart
        return TcpUart(self.run_cfg.get("meter_host", "127.0.0.1"), port)

    def sim_ms(self):
        return self.board.now_ms - self.t0

    # -- pacing ---------------------------------------------------------------------------
    def _pace(self, ms):
        t = self.sim_ms()
        u = self.uart
        be = self.backend
        if u is not None and u.waiting():
            if self.meter_fault == "meter_silent":
                u.give_up()         # nothing will come: the firmware's timeout runs in sim time
            else:
                # Lock-step: the simulated clock stands still until the answer is there.
                start = _wall_ms()
                while u.waiting():
                    if _wall_diff(_wall_ms(), start) >= METER_WAIT_CAP_MS:
                        u.give_up()
                        self.stats["meter_gave_up"] += 1
                        break
                    time.sleep_ms(1)
                self._restart_speed(t)
        if be is not None and be.commands_sent > be.commands_seen:
            # Hold the clock until the broker has delivered the command (our own
            # subscription sees it when the station's does).
            start = _wall_ms()
            while be.commands_sent > be.commands_seen:
                be.poll()
                if _wall_diff(_wall_ms(), start) >= CMD_DELIVERY_CAP_MS:
                    be.commands_seen = be.commands_sent
                    break
                time.sleep_ms(1)
            self._restart_speed(t)
        paced = self._ack_owed(t)
        if self._cmd_wait is not None:
            cid, until = self._cmd_wait
            if be.replies.get(cid) is not None or t >= until:
                self._cmd_wait = None
            else:
                paced = True
        if t < self._link_until:
            if be.seen_from_station:
                self._link_until = 0
            else:
                paced = True
        if paced:
            # 1:1 with wall time while the station owes the backend an answer (its reply,
            # or its first message after connecting), so MQTT timing stays realistic.
            start = _wall_ms()
            while _wall_diff(_wall_ms(), start) < ms:
                be.poll()
                time.sleep_ms(1)
            self.stats["paced_ms"] += ms
            self._restart_speed(t + ms)
        elif self.speed:
            due = (t + ms - self._sim0) // self.speed
            lag = due - _wall_diff(_wall_ms(), self._wall0)
            if lag > 0:
                time.sleep_ms(lag)

    def _ack_owed(self, t):
        """True while the station has records in flight that the backend should ack: the
        round trip runs in wall time, so the clock follows it 1:1 (at most ACK_SETTLE_MS
        per episode, and not while the scenario has the network stalled)."""
        if self.backend is None or self.station is None or self.net_stalled:
            return False
        outbox = getattr(self.station, "outbox", None)
        if outbox is None or not len(outbox):
            self._ack_since = None
            return False
        in_flight = False
        for r in outbox.records():
            if r.sent_ms is not None:
                in_flight = True
                break
        if not in_flight:
            self._ack_since = None
            return False
        if self._ack_since is None:
            self._ack_since = t
        return t - self._ack_since < ACK_SETTLE_MS

    def _restart_speed(self, t):
        self._wall0 = _wall_ms()
        self._sim0 = t

    # -- scenario steps ---------------------------------------------------------------------
    def apply(self, step):
        m = self.model
        b = self.board
        rec = {"t": self.sim_ms(), "k": step.kind, "name": step.name}
        for k in step.args:
            rec[k] = step.args[k]
        if step.kind == "ev":
            n = step.name
            if n == "plug":
                if not m.plugged:       # a plugged EV cannot be plugged again
                    m.plugged = True
                    m.s2 = S2_OPEN
            elif n == "unplug":
                m.plugged = False
                m.s2 = S2_OPEN
            elif n == "request" or n == "resume":
                m.s2 = S2_C
            elif n == "request_ventilation":
                m.s2 = S2_D
            elif n == "pause":
                m.s2 = S2_OPEN
            elif n == "draw":
                self.ev.wanted_ma = step.args["amps"] * 1000
            m.update()
        elif step.kind == "fault":
            n = step.name
            on = step.args.get("on", True)
            if n in ("diode_short", "cp_short_pe", "cp_open", "pe_loss"):
                setattr(m, n, on)
                m.update()
            elif n == "rcd_trip":
                b.rcd_fault = on
            elif n == "rcd_selftest_fail":
                b.rcd_selftest_ok = not on
            elif n == "contactor_welded":
                b.contactor_welded = on
            elif n == "contactor_stuck_open":
                b.contactor_stuck_open = on
            elif n == "ev_overdraw":
                self.ev.overdraw = on
            elif n == "temperature":
                b.ramp_temperature(step.args["to_dc"], step.args["over_ms"])
            elif n in ("meter_silent", "meter_garbage"):
                self.meter_fault = n if on else None
                self.channel.request({"req": "meter_fault", "mode": n if on else "ok"})
            elif n == "network_stall":
                self.net_stalled = on
                self.channel.request({"req": "network", "mode": "stall" if on else "ok"})
            elif n == "power_cut":
                if on and self.station is not None:
                    # The firmware stops where it is: no shutdown code runs on a power cut.
                    self.station = None
                    b.power_off()
                elif not on and self.station is None:
                    b.power_on()
                    self.station = self._factory(self.board, self.config)
                    self.stats["restarts"] += 1
                    rec["boot"] = b.reset_cause()
        elif step.kind == "backend":
            if self.backend is None:
                rec["skipped"] = "no broker"
            else:
                cid = self.backend.send(step.name, step.args.get("args"),
                                        step.args.get("raw"), step.args.get("id"))
                rec["id"] = cid
                self.stats["commands"] += 1
                self._cmd_wait = (cid, self.sim_ms() + CMD_SETTLE_MS)
        elif step.kind == "meter":
            if "voltage_v" in step.args:
                self.meter_voltage_dv = step.args["voltage_v"] * 10
                self.ev.voltage_mv = step.args["voltage_v"] * 1000
            if "energy_wh" in step.args:
                # A register jump (meter exchange, corruption): the EV's delivered energy
                # is unchanged, only the meter's reading moves.
                self.meter_start_wh += step.args["energy_wh"] - self.energy.wh
                self.energy.wh = step.args["energy_wh"]
            self._push_meter(force=True)
        self.channel.emit(rec)

    # -- the meter's registers follow the simulated EV -------------------------------------
    def _push_meter(self, force=False):
        if self.uart is None:
            return
        i = self.ev.current_ma if self.board.contacts_closed else 0
        key = (i, self.energy.wh, self.meter_voltage_dv)
        t = self.sim_ms()
        if not force and not self._refresh.due(t, key):
            return
        currents = [i if p < self.ev.phases else 0 for p in range(3)]
        volts = [self.meter_voltage_dv] * 3     # the supply is there whatever the EV uses
        power = self.ev.phases * i * self.meter_voltage_dv // 10000 if i else 0
        self.channel.request({"req": "meter", "t": t, "voltage_dv": volts,
                              "current_ma": currents, "power_w": power,
                              "import_wh": self.energy.wh})
        self._refresh.written(t, key)
        self.stats["meter_pushes"] += 1

    # -- observation ------------------------------------------------------------------------
    def _observe(self):
        b = self.board
        st = _station_view(self.station) if self.station is not None else _POWER_OFF
        temp = b.temperature_dc()
        key = (st[0], b.duty, b.contactor_cmd, b.contacts_closed, st[1], self.model.ev_state(),
               self.ev.current_ma, st[2], None if temp is None else temp // 10)
        t = self.sim_ms()
        if key != self._last or t - self._last_emit >= HEARTBEAT_MS:
            self._last = key
            self._last_emit = t
            self.channel.emit({
                "t": t, "k": "tick", "state": st[0], "ev": key[5],
                "cp_hi": b.cp_high_mv, "cp_lo": b.cp_low_mv, "duty": b.duty,
                "contactor": 1 if b.contactor_cmd else 0,
                "mirror": 1 if b.contacts_closed else 0, "faults": st[1],
                "blocking": st[3],
                "offered_ma": st[2], "current_ma": self.ev.current_ma,
                "power_w": self.ev.power_w() if b.contacts_closed else 0,
                "energy_wh": self.energy.wh - self.meter_start_wh, "temp_dc": temp,
                "led": b.led})

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        sc = self.sc
        steps = sc.steps
        i = 0
        tick = sc.tick_ms
        self.channel.emit({"t": 0, "k": "start", "scenario": sc.name, "seed": sc.seed,
                           "tick_ms": tick, "start_ticks": sc.start_ticks,
                           "config": self.config, "duration_ms": sc.duration_ms,
                           "meter": self.uart is not None, "broker": self.backend is not None,
                           "cable_a": sc.cable_a, "phases": sc.phases})
        while True:
            t = self.sim_ms()
            while i < len(steps) and steps[i].at_ms <= t:
                self.apply(steps[i])
                i += 1
            if self.station is not None:
                try:
                    self.station.step()
                except SimReset:
                    self.stats["restarts"] += 1
                    self.channel.emit({"t": t, "k": "reset", "cause": self.board.reset_cause()})
                    self.station = self._factory(self.board, self.config)
            b = self.board
            requesting = self.model.plugged and self.model.s2 != S2_OPEN
            self.ev.update(t, requesting, b.duty, b.contactor_mirror_closed())
            if b.contacts_closed:
                self.energy.add(self.ev.power_w(), tick)
            self._push_meter()
            if self.backend is not None:
                self.backend.poll()
            self._observe()
            self.stats["ticks"] += 1
            if t >= sc.duration_ms:
                break
            b.sleep_ms(tick)
        if self.backend is not None:
            # What the station sent in its last iterations is still on its way.
            start = _wall_ms()
            while _wall_diff(_wall_ms(), start) < END_DRAIN_MS:
                self.backend.poll()
                time.sleep_ms(5)
        end = {"t": self.sim_ms(), "k": "end",
               "energy_wh": self.energy.wh - self.meter_start_wh, "meter_wh": self.energy.wh,
               "stats": self.stats,
               "status": _status(self.station) if self.station else {"power": "off"}}
        if self.backend is not None:
            end["mqtt"] = {"messages": self.backend.messages, "bytes": self.backend.bytes}
        try:
            # Session records the backend has not acknowledged (all of them without one).
            end["unacked_sessions"] = self.station.sessions.pending() if self.station else []
        except Exception as e:  # noqa: B902 - the summary says what went wrong
            end["unacked_sessions_error"] = repr(e)
        self.channel.emit(end)


_POWER_OFF = ("OFF", [], 0, 0)   # what the trace shows while the station has no power


def _station_factory(board, config):
    from firmware.station import Station
    return Station(board, config)


def _status(station):
    try:
        return station.status()
    except Exception as e:  # noqa: B902 - report what the firmware says, whatever it is
        return {"error": repr(e)}


def _station_view(station):
    """(state name, [active fault names], offered mA, a blocking fault is active)."""
    ch = station.charger
    fs = ch.faults
    return (states.NAMES[ch.state], fs.active_names(), ch.offered_ma,
            1 if fs.blocking() else 0)


def main(argv):
    with open(argv[1]) as f:
        run = json.load(f)
    Runner(run).run()


if __name__ == "__main__":
    main(sys.argv)
