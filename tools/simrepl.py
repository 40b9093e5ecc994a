"""A real MicroPython REPL with the station running on the simulator's board.

    .venv/bin/python -m tools.simrepl [--storage DIR] [--meter-port PORT] [--set KEY=JSON]...

starts the MicroPython unix port (`micropython -i`) with MICROPYPATH from
tools.devicefiles.micropython_env(fakes=False) (the repository and micropython-lib, no fake
ESP32 modules: the simulator's board needs none), builds a Station on the SimBoard with its
flash in a directory (a fresh temporary one unless --storage is given) and leaves you at the
REPL with `sim` bound:

    >>> import diag
    >>> diag.status()
    >>> sim.plug()             # cable (32 A) into the socket, EV in state B
    >>> sim.run(1000)          # step the station for 1000 ms of simulated time
    >>> diag.pilot()           # B2: +9 V / -12 V with PWM
    >>> sim.request(); sim.run(1000); diag.status()    # C2, contactor closed
    >>> sim.rcd_fault(); sim.run(100); diag.faults()

Ctrl-C during sim.run(ms) stops the firmware's loop as on the board (contactor open, pilot
at -12 V) and returns to the REPL; the simulator stays (the launcher ignores the signal).

Time is simulated: the station only moves inside sim.run(ms) (and inside diag functions
that wait, such as selftest()), exactly as on the device where the loop is stopped while
the technician types. --meter-port connects the board's RS-485 port to a Modbus RTU peer on
127.0.0.1:PORT (e.g. `python -m tests.system.meter_peer --map sdm630 --port 5020`); while
a request is on the wire, simulated time waits for the peer in wall time.

A reset (diag.service(), or the backend's reboot command) restarts the firmware on the same
board and flash: in service mode (the flag file exists) no station is built, and diag then
uses the board as it would build it from the board file on the device.

The `Sim` class below runs on the MicroPython unix port; `main()` is the host-side launcher.
"""
import json
import os
import sys

# -- MicroPython side --------------------------------------------------------------------------

_SERVICE_FLAG = "service"
_METER_WAIT_CAP_MS = 500     # wall ms simulated time waits for the meter peer's answer


def _board_class():
    from tools.pilotsim.simboard import SimBoard

    class ReplBoard(SimBoard):
        """SimBoard whose reset() restarts the firmware in place (the REPL stays)."""
        sim = None

        def reset(self):
            self.reset_requests += 1
            self.sim._restart()

    return ReplBoard


class Sim:
    def __init__(self, root, meter_port=None, config=None):
        from firmware.station import TICK_MS
        self.root = root
        self.tick_ms = TICK_MS
        self.config = config or {}
        self.board = _board_class()(storage=root + "/data")
        self.meter = None
        if meter_port:
            from tools.pilotsim.runner import PacedUart
            from tools.tcpuart import TcpUart
            self.meter = PacedUart(TcpUart("127.0.0.1", meter_port), self.board)
            self.board._meter_uart = self.meter
        self.board.sim = self
        self.board.pacer = self._pace
        self.station = None
        import diag
        diag.board_factory = self._service_board
        diag.fs_root = root
        self._boot()

    # -- firmware start-up (what boot.py and main.py decide on the device) --------------
    def service_mode(self):
        try:
            os.stat(self.root + "/" + _SERVICE_FLAG)
            return True
        except OSError:
            return False

    def _boot(self):
        import diag
        from firmware import station as _station
        _station.current = None
        diag._svc = None
        self.station = None
        if self.service_mode():
            print("boot: SERVICE MODE (flag file %s): application not started" % _SERVICE_FLAG)
            self.board.set_contactor(False)
            return
        self.station = _station.Station(self.board, config=self.config or None)
        # The config passed on the command line applies at the first start only.
        self.config = {}

    def _restart(self):
        print("sim: reset")
        self._boot()

    def _service_board(self):
        return self.board

    # -- time ---------------------------------------------------------------------------
    def _pace(self, ms):
        # Lock-step with the real peer: simulated time stands still while it owes an
        # answer, up to a wall-time cap (a silent address never answers).
        m = self.meter
        if m is None:
            return
        m.send_held()               # the request written since the last wait goes out now
        if not m.waiting():
            return
        import time
        waited = 0
        while m.waiting():
            if waited >= _METER_WAIT_CAP_MS:
                m.give_up()
                break
            time.sleep_ms(1)
            waited += 1

    def run(self, ms):
        """Step the station for `ms` of simulated time (service mode: time only passes).
        Ctrl-C stops the loop as on the board (main.py): contactor open, pilot at -12 V,
        back at the REPL with the station's state kept for diag."""
        try:
            for _ in range(ms // self.tick_ms):
                st = self.station
                if st is not None:
                    st.step()
                self.board.sleep_ms(self.tick_ms)
        except KeyboardInterrupt:
            self.interrupted()

    def interrupted(self):
        from firmware import board as _board
        from firmware import station as _station
        b = self.board
        b.set_contactor(False)          # what bootinfo.interrupted() does on the device
        b.set_pilot(_board.PILOT_STEADY_LOW)
        b.set_led(_board.LED_FAULT)
        if self.station is not None:
            _station.current = self.station
        print("stopped (Ctrl-C): contactor open. sim.run(ms) steps the station again.")

    # -- the EV and the faults --------------------------------------------------------------
    def _model(self, **changes):
        m = self.board.model
        for k in changes:
            setattr(m, k, changes[k])
        m.update()

    def plug(self, cable_a=32):
        """Cable of `cable_a` amps (13, 20, 32, 63) into socket and EV: state B."""
        from tools.pilotsim.model import CABLE_OHMS, S2_OPEN
        self._model(plugged=True, s2=S2_OPEN, cable_ohms=CABLE_OHMS[cable_a])

    def request(self):
        """The EV closes S2: state C (asks to charge)."""
        from tools.pilotsim.model import S2_C
        self._model(s2=S2_C)

    def release(self):
        """The EV opens S2 again: back to state B."""
        from tools.pilotsim.model import S2_OPEN
        self._model(s2=S2_OPEN)

    def unplug(self):
        from tools.pilotsim.model import S2_OPEN
        self._model(plugged=False, s2=S2_OPEN)

    def cp_short(self, on=True):
        self._model(cp_short_pe=on)

    def diode_short(self, on=True):
        self._model(diode_short=on)

    def rcd_fault(self, on=True):
        """The residual-current monitor signals a trip (or stops signalling)."""
        self.board.rcd_fault = on

    def rcd_selftest_ok(self, ok=True):
        self.board.rcd_selftest_ok = ok

    def weld(self, on=True):
        """The main contacts stay closed once closed."""
        self.board.contactor_welded = on

    def stuck_open(self, on=True):
        self.board.contactor_stuck_open = on

    def temperature(self, dc, over_ms=0):
        self.board.ramp_temperature(dc, over_ms)


def start(root, meter_port=None, config=None):
    """Build the simulation (called by the launcher's start-up line)."""
    return Sim(root, meter_port, config)


# -- host side ------------------------------------------------------------------------------------

def command(root, meter_port=None, config=None):
    """argv and env for the unix port with a Sim in `root` and the REPL afterwards."""
    from tools.devicefiles import MICROPYTHON, micropython_env
    env = micropython_env(fakes=False)
    code = ("from tools.simrepl import start\n"
            "sim = start(%r, %r, %r)\n"
            "print('simulated station ready: sim.plug(), sim.request(), sim.run(ms); "
            "import diag; diag.help()')\n" % (root, meter_port, dict(config or {})))
    return [MICROPYTHON, "-i", "-c", code], env


def run_child(cmd, env, cwd):
    """Run the unix port in the foreground. Ctrl-C at the terminal reaches the whole process
    group: the unix port turns it into KeyboardInterrupt (Sim.run stops, the REPL stays),
    while this launcher ignores it instead of killing its child."""
    import signal
    import subprocess

    def child_default():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, preexec_fn=child_default)
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)


def _parse_set(items):
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def main(argv=None):
    import argparse
    import shutil
    import tempfile
    p = argparse.ArgumentParser(prog="python -m tools.simrepl", description=__doc__.split("\n")[0])
    p.add_argument("--storage", help="directory for the simulated flash (kept)")
    p.add_argument("--meter-port", type=int, help="Modbus RTU-over-TCP peer on 127.0.0.1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="configuration at the first start, e.g. --set max_current_ma=16000")
    args = p.parse_args(argv)
    root = args.storage
    temp = root is None
    if temp:
        root = tempfile.mkdtemp(prefix="simrepl-")
    os.makedirs(root, exist_ok=True)
    cmd, env = command(os.path.abspath(root), args.meter_port, _parse_set(args.set))
    try:
        return run_child(cmd, env, root)
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__" and sys.implementation.name != "micropython":
    sys.exit(main())
