"""The firmware side of a simulation: runs on the MicroPython unix port.

    micropython -m tools.pilotsim.runner RUN.json

RUN.json (written by the orchestrator, tools/pilotsim/orchestrate.py) holds the checked
scenario and where the peers are. This process builds a SimBoard, starts the real firmware
(firmware.station.Station) on it and plays the scenario's steps at their exact simulated
times between two control-loop iterations. It talks to the orchestrator over its stdio:

- stdout: one JSON object per line. Trace records have "k" (see docs/scenarios.md,
  "Trace"); requests have "req" and wait for one line on stdin ("ok" or "err REASON"):
  meter register updates and meter faults. This lock-step keeps the meter's registers
  exactly in line with the simulated EV. Every record is masked (configured secrets)
  before it is written.
- The backend: this process publishes the scenario's commands to the broker itself (at their
  simulated time) and subscribes to the station's topics, so MQTT traffic lands in the trace
  with simulated timestamps. The station's own MQTT connection goes through SimNet
  (simnet.py), a relay in this process.

Time: see SimBoard and docs/scenarios.md, "Time and peers": simulated time stands still
while a peer owes an answer to what the firmware did in the last iteration (a Modbus answer,
MQTT answers and deliveries), and the firmware sees the answer at its next iteration. No
decision of the firmware depends on wall time, so a scenario gives the same trace on
every run.
"""
import json
import sys
import time

from firmware import states
from tools.pilotsim import scenario as _scenario
from tools.pilotsim.model import (CABLE_OHMS, EVLoad, EnergyCounter, FrontEnd, MeterNoise,
                                  MeterRefresh, PilotModel, S2_C, S2_D, S2_OPEN)
from tools.pilotsim.simnet import SimNet
from tools.pilotsim.simboard import SimBoard, SimReset

HEARTBEAT_MS = 1000          # a trace record at least this often
METER_PUSH_MS = 500          # meter registers refreshed at least this often while energy flows
METER_WAIT_CAP_MS = 2000     # wall ms the clock is held for the meter peer's answer
NET_WAIT_CAP_MS = 2000       # wall ms the clock is held for the broker's answers
STATION_BROKER = ("192.0.2.1", 1883)    # what the station is configured with (TEST-NET-1)


# Wall time (waits for peers, --speed): the host's clock on either runtime.
from firmware.compat import sleep_ms as _sleep_ms  # noqa: E402
from firmware.compat import ticks_diff as _wall_diff  # noqa: E402
from firmware.compat import ticks_ms as _wall_ms  # noqa: E402


class Channel:
    """Line-based JSON to the orchestrator; requests wait for its answer (lock-step)."""

    def __init__(self, out=None, inp=None):
        self.out = out or sys.stdout
        self.inp = inp or sys.stdin
        self.lines = 0
        self.secrets = ()           # configured secret values: never written out

    def emit(self, record):
        self.out.write(json.dumps(_scenario.mask(record, self.secrets)))
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


def answer_len(request):
    """The length of the Modbus RTU answer a request asks for (None: not known), so the
    runner waits for the whole answer, not its first TCP segment."""
    if len(request) < 6:
        return None
    fc = request[1]
    count = (request[4] << 8) | request[5]
    if fc in (3, 4):
        return 5 + 2 * count
    if fc in (1, 2):
        return 5 + (count + 7) // 8
    if fc in (5, 6, 15, 16):
        return 8
    return None


class PacedUart:
    """The meter's UART as the firmware sees it, in simulated time.

    The pymodbus peer answers in wall time; the firmware must see the answer when a real
    RS-485 line would deliver it. The request the firmware writes in an iteration is held
    until the runner's pacer sends it (`send_held()`), after the meter registers follow
    that iteration's EV, so the answer never races a register update. The runner then
    holds the simulated clock while the answer is incomplete (`waiting()`), and this
    stream keeps it invisible until request and answer have crossed the line at the
    configured baud rate (10 bits a character with 8N1, 11 with parity). Meter latency is
    then the same on every run and every machine, whatever the load.
    """

    def __init__(self, uart, board):
        self._u = uart
        self.board = board
        self.pending = False        # a request was written and its answer not yet read
        self.requests = 0
        self._held = b""
        self._sent_ms = 0
        self._sent_len = 0
        self._want = None           # length of the whole answer, when known
        self._rx = bytearray()
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
        self._want = answer_len(buf)
        self._visible_ms = None
        self._rx = bytearray()
        self._held = bytes(buf)
        return len(buf)

    def send_held(self):
        """Put the request written in this iteration on the wire (the runner's pacer)."""
        if self._held:
            data = self._held
            self._held = b""
            self._u.write(data)

    def _fill(self):
        n = self._u.any()
        if n:
            data = self._u.read(n)
            if data:
                self._rx += data

    def _complete(self):
        self._fill()
        n = len(self._rx)
        if not n:
            return False
        if n >= 2 and self._rx[1] & 0x80:
            return n >= 5           # exception answer
        return self._want is None or n >= self._want

    def waiting(self):
        """True while the peer owes (part of) the answer to the last request."""
        return self.pending and self._visible_ms is None and not self._complete()

    def give_up(self):
        # A peer that never answers (or stops half-way): stop holding the clock; what came
        # is delivered at its line time and the firmware's timeout runs in simulated time.
        self.pending = False

    def any(self):
        self._fill()
        n = len(self._rx)
        if not n:
            return 0
        if self._visible_ms is None:
            self._visible_ms = self._sent_ms + self._line_ms(self._sent_len + n)
        if self.board.now_ms < self._visible_ms:
            return 0
        return n

    def read(self, n=-1):
        avail = self.any()
        if not avail:
            return None
        if n is None or n < 0 or n > avail:
            n = avail
        data = bytes(self._rx[:n])
        self._rx = self._rx[n:]
        self.pending = False
        return data

    def readinto(self, buf, n=None):
        want = len(buf) if n is None else min(n, len(buf))
        data = self.read(want)
        if not data:
            return 0
        buf[:len(data)] = data
        return len(data)

    def flush(self):
        if hasattr(self._u, "flush"):
            self._u.flush()

    def set_de(self, on):
        if hasattr(self._u, "set_de"):
            self._u.set_de(on)


_TO_STATION = ("cmd", "ack")     # what the backend publishes; the rest is the station's


class Backend:
    """The scenario's side of MQTT: publishes commands, acknowledges records, observes the
    station's topics. Its own connection goes straight to the broker; SimNet.settle()
    calls `receive()` while it waits and `flush()` once everything owed has arrived."""

    def __init__(self, host, port, prefix, station_id, channel, now):
        from umqtt.simple import MQTTClient
        self.base = "%s/%s/" % (prefix, station_id)
        self.cmd_topic = self.base + "cmd"
        self.channel = channel
        self.now = now
        self.net = None
        self.messages = 0
        self.bytes = 0
        self.replies = {}           # id -> reply payload (dict)
        self.owed = 0               # messages the broker still owes this client
        self._batch = []            # trace records of this delivery, written by flush()
        self._n = 0
        self.client = MQTTClient(b"pilotsim-backend", host, port, keepalive=0)
        self.client.set_callback(self._on_msg)
        self.client.connect()
        self.client.subscribe((self.base + "#").encode())

    def _on_msg(self, topic, msg):
        topic = topic.decode()
        self.owed -= 1
        self.messages += 1
        self.bytes += len(topic) + len(msg)
        sub = topic[len(self.base):] if topic.startswith(self.base) else topic
        try:
            payload = json.loads(msg)
        except ValueError:
            payload = msg.decode() if isinstance(msg, bytes) else msg
        if sub == "reply" and isinstance(payload, dict) and "id" in payload:
            self.replies[payload["id"]] = payload
        if sub == "record" and isinstance(payload, dict) and "id" in payload:
            # As a backend does: acknowledge every record so the outbox can let it go.
            self._publish(self.base + "ack", json.dumps({"v": 1, "ids": [payload["id"]]}))
        self._batch.append({"t": self.now(), "k": "mqtt", "topic": sub,
                            "dir": "to_station" if sub in _TO_STATION else "from_station",
                            "bytes": len(msg), "payload": payload})

    def _publish(self, topic, payload):
        self.client.publish(topic.encode(), payload.encode())
        if self.net is not None:
            self.net.backend_published(True)

    def receive(self):
        while _readable(self.client.sock):
            self.client.check_msg()

    def flush(self):
        # The station's messages (one connection: broker order) before this client's own,
        # whatever order the broker interleaved them in.
        batch = self._batch
        self._batch = []
        for r in batch:
            if r["dir"] == "from_station":
                self.channel.emit(r)
        for r in batch:
            if r["dir"] != "from_station":
                self.channel.emit(r)

    def send(self, name, args, raw, cid):
        self._n += 1
        if cid is None:
            cid = "sim-%d" % self._n
        if raw is not None:
            payload = raw
        else:
            payload = json.dumps({"v": 1, "id": cid, "cmd": name, "args": args})
        self._publish(self.cmd_topic, payload)
        return cid


def _readable(sock):
    import select
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(0))


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
        self.net = None
        self.config = dict(sc.config)
        if run.get("broker_port"):
            host = run.get("broker_host", "127.0.0.1")
            # The station's address of the broker is a constant: SimNet carries its
            # connections to the real one (whose port changes every run), so the trace
            # does not change with it.
            self.config["mqtt_host"] = STATION_BROKER[0]
            self.config["mqtt_port"] = STATION_BROKER[1]
            # A scenario's trace starts the link at once unless it asks for the spread.
            self.config.setdefault("mqtt_boot_spread_s", 0)
            self.backend = Backend(host, run["broker_port"], self._cfg("mqtt_prefix"),
                                   self._cfg("station_id"), self.channel, self.sim_ms)
            self.net = SimNet(host, run["broker_port"], self.backend, cap_ms=NET_WAIT_CAP_MS)
            self.backend.net = self.net
        self.channel.secrets = _scenario.secret_values(sc, self.config)
        self.speed = run.get("speed", 0)        # sim ms per wall ms; 0 = unlimited
        self._factory = station_factory or _station_factory
        # The link's backoff jitter comes from `random`: seeded, so reconnects repeat.
        try:
            import random
            random.seed(sc.seed)
        except (ImportError, AttributeError):
            pass
        self.station = None
        self.board.pacer = self._pace
        self._wall0 = _wall_ms()
        self.net_stalled = False
        self._last = None
        self._last_emit = -HEARTBEAT_MS
        self._refresh = MeterRefresh(METER_PUSH_MS)
        self._noise = MeterNoise(sc.seed)
        self.stats = {"ticks": 0, "restarts": 0, "meter_pushes": 0, "commands": 0,
                      "meter_gave_up": 0, "net_gave_up": 0}
        pool = run.get("firmware_pool")
        if pool:
            # The harness is built: from here on the firmware has the pool of the heap the
            # run asked for (tools/bench_rig.py HarnessRoom; orchestrate.py starts this
            # process with room for the harness on top).
            from tools.bench_rig import ROOM
            ROOM.reserve(pool)
        self._start_station()

    def _start_station(self):
        self.station = self._factory(self.board, self.config)
        link = getattr(self.station, "link", None)
        if link is not None and self.net is not None:
            # The station's sockets are the relay's (simnet.py): answers in lock-step.
            link._sf = self.net

    def _cfg(self, key):
        from firmware import config
        return self.config.get(key, config.default(key))

    def _open_meter(self, port):
        from tools.tcpuart import TcpUart
        return TcpUart(self.run_cfg.get("meter_host", "127.0.0.1"), port)

    def sim_ms(self):
        return self.board.now_ms - self.t0

    # -- pacing ---------------------------------------------------------------------------
    def _pace(self, ms):
        """Between two iterations: the peers answer what this iteration asked, while the
        simulated clock stands still (docs/scenarios.md, "Time and peers")."""
        u = self.uart
        if u is not None:
            u.send_held()
            if u.waiting():
                if self.meter_fault == "meter_silent":
                    u.give_up()     # nothing will come: the firmware's timeout runs in sim time
                else:
                    start = _wall_ms()
                    while u.waiting():
                        if _wall_diff(_wall_ms(), start) >= METER_WAIT_CAP_MS:
                            u.give_up()
                            self.stats["meter_gave_up"] += 1
                            break
                        _sleep_ms(1)
        if self.net is not None:
            if not self.net.settle():
                self.stats["net_gave_up"] += 1
        owed = getattr(getattr(self.station, "backend", None), "owed", None)
        if owed is not None and owed():
            # A backend of its own sockets (OCPP 1.6J) waits for a real central system: the
            # simulated clock runs 1:1 with wall time until it has answered.
            _sleep_ms(ms)
        elif self.speed:
            # --speed: simulated time at most `speed` times wall time (for a person to
            # follow); it only waits, so it cannot change what the firmware decides.
            due = (self.sim_ms() + ms) // self.speed
            lag = due - _wall_diff(_wall_ms(), self._wall0)
            if lag > 0:
                _sleep_ms(lag)

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
                    # Another cable (its PP resistor codes its rating) comes with this plug.
                    if "cable_a" in step.args:
                        m.cable_ohms = CABLE_OHMS[step.args["cable_a"]]
            elif n == "unplug":
                m.plugged = False
                m.s2 = S2_OPEN
                if "cable_a" in step.args:
                    m.cable_ohms = CABLE_OHMS[step.args["cable_a"]]
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
                if self.net is not None:
                    if on:
                        self.net.stall()
                    else:
                        self.net.resume()
            elif n == "power_cut":
                if on and self.station is not None:
                    # The firmware stops where it is: no shutdown code runs on a power cut.
                    # Its TCP connections vanish with it (the broker publishes the will).
                    self.station = None
                    b.power_off()
                    if self.net is not None:
                        self.net.drop_all()
                elif not on and self.station is None:
                    b.power_on()
                    self._start_station()
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
        # A meter's readings: the supply voltage is there whatever the EV does, current and
        # power are zero with the contacts open, energy only counts up; voltage and
        # current carry a little (seeded) noise.
        nz = self._noise
        currents = [nz.current(i) if p < self.ev.phases else 0 for p in range(3)]
        volts = [nz.voltage(self.meter_voltage_dv) for _ in range(3)]
        power = 0
        for p in range(3):
            power += volts[p] * currents[p] // 10000
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
                    self._start_station()
            b = self.board
            requesting = self.model.plugged and self.model.s2 != S2_OPEN
            self.ev.update(t, requesting, b.duty, b.contactor_mirror_closed())
            if b.contacts_closed:
                self.energy.add(self.ev.power_w(), tick)
            self._push_meter()
            self._observe()
            self.stats["ticks"] += 1
            if t >= sc.duration_ms:
                break
            # Steps between two iterations happen at the millisecond they name; the firmware
            # sees them at its next sample, as on the device.
            nxt = t + tick
            while i < len(steps) and steps[i].at_ms < nxt:
                at = steps[i].at_ms
                if at > self.sim_ms():
                    b.sleep_ms(at - self.sim_ms())
                self.apply(steps[i])
                i += 1
            b.sleep_ms(nxt - self.sim_ms())
        if self.net is not None:
            # What the station sent in its last iteration reaches the backend.
            self.net.settle()
        self.stats["net_gave_up"] = self.net.gave_up if self.net is not None else 0
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
