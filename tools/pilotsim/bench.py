"""Host side of the hardware pilot-signal simulator (the bench): the same scenarios, played
on relays that switch the EV's resistors and diode on a real CP/PP line.

The bench device sits between the station under test and nothing else: relays switch R2,
R3 (1.3 kOhm / 270 Ohm), a diode bypass, a CP-PE short, a CP break, a PE break and the PP
resistor; an ADC on the CP line reports what the station drives. The protocol (docs/
scenarios.md, "Bench protocol") is line-based ASCII over a serial port, 115200 8N1:

    host:   CMD [ARG]\\n          device: OK [DATA]\\n  or  ERR REASON\\n

Commands: HELLO, RESET, PLUG 0|1, S2 B|C|D, PP OHMS|OPEN, DIODE OK|SHORT, CPPE 0|1,
CPOPEN 0|1, PE 0|1 (1 = PE present), MEAS (-> OK CP HIGH_MV LOW_MV DUTY_PERMILLE).
Every command is answered within REPLY_TIMEOUT_S; the device applies relay changes before
it answers, so the host's timestamp of the answer bounds when the EV "did" it.

Scenario steps the bench cannot do (residual current, contactor, temperature, meter,
network, backend) are skipped and listed; the station's own meter and backend are real.
"""
import json
import time

from tools.pilotsim.model import CABLE_OHMS

PROTOCOL = "PILOTSIM-BENCH 1"
REPLY_TIMEOUT_S = 0.5
BAUD = 115200

# Scenario fault -> (command, argument when on, argument when off)
_FAULT_COMMANDS = {
    "diode_short": ("DIODE", "SHORT", "OK"),
    "cp_short_pe": ("CPPE", "1", "0"),
    "cp_open": ("CPOPEN", "1", "0"),
    "pe_loss": ("PE", "0", "1"),
}
_EV_COMMANDS = {
    "plug": (("PLUG", "1"), ("S2", "B")),
    "unplug": (("S2", "B"), ("PLUG", "0")),
    "request": (("S2", "C"),),
    "resume": (("S2", "C"),),
    "request_ventilation": (("S2", "D"),),
    "pause": (("S2", "B"),),
}


class BenchError(RuntimeError):
    pass


class Bench:
    """One bench device on a serial port (a pyserial Serial, or a port name)."""

    def __init__(self, port, baud=BAUD, timeout_s=REPLY_TIMEOUT_S):
        if isinstance(port, str):
            import serial
            port = serial.Serial(port, baud, timeout=timeout_s)
        self.ser = port
        self.timeout_s = timeout_s
        self.log = []           # (monotonic s, command, reply)

    def command(self, cmd, arg=None):
        line = cmd if arg is None else "%s %s" % (cmd, arg)
        self.ser.reset_input_buffer()
        self.ser.write((line + "\n").encode())
        self.ser.flush()
        reply = self._readline()
        self.log.append((time.monotonic(), line, reply))
        if reply.startswith("OK"):
            return reply[2:].strip()
        if reply.startswith("ERR"):
            raise BenchError("%s: %s" % (line, reply[3:].strip() or "refused"))
        raise BenchError("%s: unexpected reply %r" % (line, reply))

    def _readline(self):
        deadline = time.monotonic() + self.timeout_s
        buf = b""
        while time.monotonic() < deadline:
            chunk = self.ser.readline()
            if chunk:
                buf += chunk
                if buf.endswith(b"\n"):
                    return buf.decode(errors="replace").strip()
        raise BenchError("no reply within %d ms" % (self.timeout_s * 1000))

    def hello(self):
        ident = self.command("HELLO")
        if not ident.startswith(PROTOCOL):
            raise BenchError("not a pilot-signal bench (%s)" % ident)
        return ident

    def reset(self):
        self.command("RESET")

    def measure(self):
        """(high_mv, low_mv, duty_permille) of the CP as the bench reads it."""
        parts = self.command("MEAS").split()
        if len(parts) != 4 or parts[0] != "CP":
            raise BenchError("MEAS: malformed reply %r" % " ".join(parts))
        try:
            return int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            raise BenchError("MEAS: not integers: %r" % " ".join(parts))

    def set_cable(self, amps):
        self.command("PP", str(CABLE_OHMS[amps]))

    def apply(self, step):
        """Play one scenario step; returns False when the bench cannot do it."""
        if step.kind == "ev" and step.name in _EV_COMMANDS:
            for cmd, arg in _EV_COMMANDS[step.name]:
                self.command(cmd, arg)
            return True
        if step.kind == "fault" and step.name in _FAULT_COMMANDS:
            cmd, on, off = _FAULT_COMMANDS[step.name]
            self.command(cmd, on if step.args.get("on", True) else off)
            return True
        return False


def play(sc, bench, out=None, sample_ms=100, clock=time.monotonic, sleep=time.sleep):
    """Play a checked scenario on the bench in wall time (hardware cannot run faster).
    Writes JSONL records to `out` (a file) if given; returns (records, skipped steps)."""
    records = []
    skipped = []

    def emit(rec):
        records.append(rec)
        if out is not None:
            out.write(json.dumps(rec) + "\n")

    bench.hello()
    bench.reset()
    bench.set_cable(sc.cable_a)
    t0 = clock()
    emit({"t": 0, "k": "start", "scenario": sc.name, "bench": True})
    steps = list(sc.steps)
    next_sample = 0
    while True:
        now = int((clock() - t0) * 1000)
        while steps and steps[0].at_ms <= now:
            st = steps.pop(0)
            done = bench.apply(st)
            rec = {"t": int((clock() - t0) * 1000), "k": st.kind, "name": st.name}
            rec.update(st.args)
            if not done:
                rec["skipped"] = "not on the bench"
                skipped.append(st)
            emit(rec)
        if now >= next_sample:
            hi, lo, duty = bench.measure()
            emit({"t": now, "k": "cp", "cp_hi": hi, "cp_lo": lo, "duty": duty})
            next_sample = now + sample_ms
        if now >= sc.duration_ms:
            break
        nxt = min([next_sample, sc.duration_ms] + ([steps[0].at_ms] if steps else []))
        wait = (nxt - int((clock() - t0) * 1000)) / 1000
        if wait > 0:
            sleep(wait)
    bench.reset()
    emit({"t": int((clock() - t0) * 1000), "k": "end"})
    return records, skipped


def main_play(path, port, baud, out):
    from tools.pilotsim import scenario as _scenario
    sc = _scenario.load(path)
    bench = Bench(port, baud)
    records, skipped = play(sc, bench)
    for r in records:
        if r["k"] == "cp":
            continue
        out.write("%8.2f s  %s %s\n" % (r["t"] / 1000, r["k"], r.get("name", "")))
    for st in skipped:
        out.write("skipped on the bench: %s %s at %d ms\n" % (st.kind, st.name, st.at_ms))
    return 0
