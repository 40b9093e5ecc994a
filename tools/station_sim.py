"""One virtual station in real time: the device side of `make station` (tools/station.py).

    micropython -m tools.station_sim RUN.json

Runs on the ESP32 stand-in (on PyPI's 64-bit port when the broker needs TLS: the stand-in
has no mbedtls). RUN.json, written by tools/station.py: {"config": {firmware config keys},
"storage": folder (the station's flash), "meter_wh": the meter's register at start,
optional "emit_topics": [topic, ...] (only MQTT messages on these topics are printed: a
fleet of stations, tools/fleet.py, follows its records without the cost of the rest),
optional "no_jitter": true (the link's random draws are all 0: tools/fleet.py --no-jitter)}.

The real firmware (firmware.station.Station, its MQTT link to whatever broker the config
names) runs on the simulator's board (tools/pilotsim/simboard.py) whose clock follows the
wall clock, with a simulated EV (tools/pilotsim/model.py) and an SDM630 meter that answers
the firmware's Modbus requests in this process (SimMeter), its registers following the EV.

stdin: one command a line (tools/station.py checks them and lists them in its help):
    plug | charge [AMPS] | pause | unplug | fault NAME [off] | temp DEGREES | tag IDTAG
    | status | quit
stdout: one JSON object a line: {"k": "state"} on every change of what the user sees,
{"k": "mqtt", "dir": "out"|"in", "topic", "payload"} for every MQTT message the station
sends or receives, {"k": "reply"} answers to `status`, {"k": "error"}, {"k": "bye"}.
"""
import json
import select
import sys
import time

from firmware import meters
from firmware.modbus import crc16
from firmware.station import TICK_MS
from tools.pilotsim.model import (CABLE_OHMS, EVLoad, EnergyCounter, PilotModel, S2_C,
                                  S2_OPEN)
from tools.pilotsim.simboard import SimBoard, SimReset

VOLTAGE_DV = 2300
PHASES = 3
DEFAULT_AMPS = 16
MODEL_FAULTS = ("diode_short", "cp_short_pe", "cp_open", "pe_loss")
BOARD_FAULTS = ("rcd_trip", "contactor_welded", "contactor_stuck_open", "ev_overdraw")


def emit(record):
    sys.stdout.write(json.dumps(record))
    sys.stdout.write("\n")
    sys.stdout.flush()


class RealTimeBoard(SimBoard):
    """The simulator's board with the wall clock as its clock: sleep_ms() waits in wall
    time, and a loop iteration that took longer than its tick moves the clock by what it
    took (the firmware sees real time, as on the device)."""

    def __init__(self, **kw):
        SimBoard.__init__(self, **kw)
        self._wall0 = time.ticks_ms()

    def _elapsed(self):
        return time.ticks_diff(time.ticks_ms(), self._wall0)

    def sleep_ms(self, ms):
        target = self.now_ms + ms
        late = target - self._elapsed()
        if late > 0:
            time.sleep_ms(late)
        self.now_ms = max(target, self._elapsed())

    def wall_time(self):
        # The host's UTC clock: session records carry real start and stop times.
        return int(time.time())


class SimMeter:
    """A Modbus RTU meter (register map `map_name`, slave `slave`) answering the firmware's
    reads at once, from values the simulation sets (set())."""

    def __init__(self, map_name="sdm630", slave=1):
        self.map = meters.load_map(map_name, "")
        self.slave = slave
        self.values = [0] * meters.N_QUANTITIES
        self._regs = {}
        self._rx = b""
        self.requests = 0

    def set(self, volts_dv, currents_ma, power_w, import_wh):
        v = self.values
        for p in range(3):
            v[meters.V_L1 + p] = volts_dv
            v[meters.I_L1 + p] = currents_ma[p]
        v[meters.POWER] = power_w
        v[meters.IMPORT] = import_wh
        v[meters.EXPORT] = 0
        self._regs = self.map.encode(v)

    # the stream the firmware's Modbus master uses
    def write(self, buf):
        req = bytes(buf)
        self.requests += 1
        if len(req) == 8 and crc16(req) == 0 and req[0] == self.slave:
            self._rx = self._answer(req)
        return len(req)

    def _answer(self, req):
        fc = req[1]
        addr = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        body = bytearray((self.slave, fc, 2 * count))
        for a in range(addr, addr + count):
            w = self._regs.get(a, 0) if fc == self.map.fc else None
            if w is None:
                body = bytearray((self.slave, fc | 0x80, 1))
                break
            body.append(w >> 8)
            body.append(w & 0xFF)
        c = crc16(body)
        body.append(c & 0xFF)
        body.append(c >> 8)
        return bytes(body)

    def any(self):
        return len(self._rx)

    def readinto(self, buf, nbytes=None):
        n = min(len(buf) if nbytes is None else nbytes, len(self._rx))
        if not n:
            return None
        buf[:n] = self._rx[:n]
        self._rx = self._rx[n:]
        return n

    def read(self, n=-1):
        if not self._rx:
            return None
        n = len(self._rx) if n < 0 else n
        data = self._rx[:n]
        self._rx = self._rx[n:]
        return data

    def flush(self):
        pass

    def set_de(self, on):
        pass


def _payload(msg):
    try:
        return json.loads(msg)
    except ValueError:
        try:
            return bytes(msg).decode()
        except UnicodeError:
            return repr(bytes(msg))


class VirtualStation:
    def __init__(self, run):
        self.config = run["config"]
        self._emit_topics = run.get("emit_topics")
        self._no_jitter = run.get("no_jitter", False)
        self.loops = 0
        self.model = PilotModel()
        self.model.cable_ohms = CABLE_OHMS[32]
        self.model.update()
        self.meter = SimMeter(self.config.get("meter_map", "sdm630"),
                              self.config.get("meter_addr", 1))
        self.board = RealTimeBoard(model=self.model, storage=run["storage"],
                                   meter_uart=self.meter)
        self.ev = EVLoad(phases=PHASES, wanted_ma=DEFAULT_AMPS * 1000, stop_ms=1000,
                         voltage_mv=VOLTAGE_DV * 100)
        self.energy = EnergyCounter(start_wh=run.get("meter_wh", 0))
        self._meter_key = None
        self._push_meter()
        self.station = None
        self._start()
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._last = None
        self._t = self.board.now_ms
        self.running = True

    def _start(self):
        from firmware.station import Station
        self.station = Station(self.board, config=self.config)
        link = self.station.link
        if link is not None and self._no_jitter:
            # A fleet's comparison run (tools/fleet.py --no-jitter): every random draw of
            # the link (first connect, reconnect backoff) is 0, as without storm control.
            link._rand = _zero
            link.boot_delay_ms = 0
        if link is not None:
            # The link looks a broker name up itself, off the loop (firmware/resolver.py).
            self._watch(link)

    def _watch(self, link):
        # What goes over MQTT, seen from the station: every publish, every message in.
        client = link._client
        publish = client.publish
        receive = client.cb
        base = link.topics.base

        def _topic(topic):
            topic = bytes(topic)
            return (topic[len(base):] if topic.startswith(base) else topic).decode()

        only = self._emit_topics

        def sent(topic, msg, retain=False, qos=0):
            publish(topic, msg, retain, qos)
            if only is not None and _topic(topic) not in only:
                return
            emit({"k": "mqtt", "dir": "out", "topic": _topic(topic), "retain": retain,
                  "payload": _payload(msg) if msg else ""})

        def received(topic, msg):
            if only is None or _topic(topic) in only:
                emit({"k": "mqtt", "dir": "in", "topic": _topic(topic), "payload": _payload(msg)})
            receive(topic, msg)

        publish_parts = client.publish_parts

        def sent_parts(topic, parts):
            # Outbox records go out piece by piece (no joined copy on the device).
            publish_parts(topic, parts)
            if only is None or _topic(topic) in only:
                emit({"k": "mqtt", "dir": "out", "topic": _topic(topic), "retain": False,
                      "payload": _payload(b"".join(bytes(p) for p in parts))})

        client.publish = sent
        client.publish_parts = sent_parts
        client.cb = received

    # -- the user's commands ---------------------------------------------------------------
    def command(self, line):
        words = line.split()
        if not words:
            return
        name = words[0]
        arg = words[1] if len(words) > 1 else None
        m = self.model
        b = self.board
        if name == "plug":
            m.plugged = True
            m.s2 = S2_OPEN
        elif name == "charge":
            if not m.plugged:
                m.plugged = True
            m.s2 = S2_C
            if arg is not None:
                self.ev.wanted_ma = int(arg) * 1000
        elif name == "pause":
            m.s2 = S2_OPEN
        elif name == "unplug":
            m.plugged = False
            m.s2 = S2_OPEN
        elif name == "fault":
            on = len(words) < 3 or words[2] != "off"
            if arg in MODEL_FAULTS:
                setattr(m, arg, on)
            elif arg == "rcd_trip":
                b.rcd_fault = on
            elif arg == "contactor_welded":
                b.contactor_welded = on
            elif arg == "contactor_stuck_open":
                b.contactor_stuck_open = on
            elif arg == "ev_overdraw":
                self.ev.overdraw = on
            else:
                raise ValueError("unknown fault %s" % arg)
        elif name == "temp":
            b.ramp_temperature(int(float(arg) * 10), 10000)
        elif name == "tag":
            ok, why = self.station.present_id_tag(arg, b.ticks_ms())
            emit({"k": "reply", "to": "tag", "accepted": ok, "reason": why})
        elif name == "status":
            # loops x TICK_MS against now_ms: 1.0 when the loop keeps to real time
            emit({"k": "reply", "to": "status", "status": self.station.status(),
                  "energy_wh": self.energy.wh, "current_ma": self.ev.current_ma,
                  "loops": self.loops, "now_ms": b.now_ms,
                  "outbox": len(self.station.outbox) if self.station.outbox is not None else None})
        elif name == "quit":
            self.running = False
        else:
            raise ValueError("unknown command %s" % name)
        m.update()

    def _read_commands(self):
        while self._poll.poll(0):
            line = sys.stdin.readline()
            if not line:
                self.running = False        # the terminal side went away
                return
            try:
                self.command(line.strip())
            except Exception as e:  # noqa: BLE001 - a bad command must not stop the station
                emit({"k": "error", "error": "%s: %s" % (line.strip(), e)})

    # -- the simulated EV and meter ----------------------------------------------------------
    def _push_meter(self):
        i = self.ev.current_ma if self.board.contacts_closed else 0
        currents = [i if p < PHASES else 0 for p in range(3)]
        power = PHASES * i * VOLTAGE_DV // 10000 if i else 0
        key = (i, self.energy.wh)
        if key != self._meter_key:         # the register image only when a value moved
            self._meter_key = key
            self.meter.set(VOLTAGE_DV, currents, power, self.energy.wh)

    def _observe(self):
        st = self.station
        c = st.charger
        key = (c.state, c.offered_ma, c.contactor, self.ev.current_ma,
               tuple(st.faults.active_names()),
               st.link.online if st.link is not None else None)
        if key != self._last:
            self._last = key
            emit({"k": "state", "state": st.status()["state"], "offered_ma": c.offered_ma,
                  "contactor": c.contactor, "current_ma": self.ev.current_ma,
                  "faults": list(key[4]), "online": key[5], "energy_wh": self.energy.wh})

    def run(self):
        b = self.board
        try:
            while self.running:
                self.loops += 1
                self._read_commands()
                try:
                    self.station.step()
                except SimReset:
                    emit({"k": "reset", "cause": b.reset_cause()})
                    self._start()
                t = b.now_ms
                requesting = self.model.plugged and self.model.s2 != S2_OPEN
                self.ev.update(t, requesting, b.duty, b.contactor_mirror_closed())
                if b.contacts_closed:
                    self.energy.add(self.ev.power_w(), t - self._t)
                self._t = t
                self._push_meter()
                self._observe()
                b.sleep_ms(TICK_MS)
        except KeyboardInterrupt:
            pass
        # As a reboot does: contactor open, the session closed on flash, offline status.
        self.station.shutdown("shutdown")
        emit({"k": "bye", "energy_wh": self.energy.wh})


def _zero(n):
    return 0


def main(argv):
    with open(argv[1]) as f:
        run = json.load(f)
    VirtualStation(run).run()


if __name__ == "__main__":
    main(sys.argv)
