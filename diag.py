"""Diagnostics for the technician at the serial REPL:  import diag; diag.help()

Where the data comes from:
  - A station exists (firmware.station.current): Ctrl-C stopped main.py's loop (its
    KeyboardInterrupt path opened the contactor), or a simulator runs one. diag reads that
    station: its charger, faults, events, counters, meter and configuration.
  - No station (service mode: boot.py found the flag file or the service pin, so main.py
    started neither the application nor the watchdog): diag builds the board itself from
    the board file, once, on first use. Building the board drives the contactor coil off and
    the pilot to steady +12 V (no PWM, so no current is offered); no Station is built, so
    nothing charges, no counter is incremented and no watchdog starts. Configuration and
    lifetime counters are read from flash; a `set()` is stored for the next start.

Every function prints text that fits an 80-column terminal. The ones that only show
something return None; the ones that check or change something return their verdict:
selftest() -> True (no check failed) / False, scan() -> [addresses that answered],
set(), clear() and service() -> True (done) / False (refused, nothing changed).

Questions: set() asks before it raises a current, service() before it stops a running
charge (answer y). `ask` (a callable question -> answer) replaces input() in tests.

Safety: the only place that energises the contactor is selftest()'s contactor cycle. It runs
only while the contactor is open, the pilot reads state A (no EV) on a steady +12 V and
the PP reads no cable (on a tethered cable, which has no such PP, only when the technician
confirms the connector is parked: selftest(connector_parked=True)) and every check before
it passed; it samples the pilot again every millisecond while the coil is on, opens at once
when anything changes, and always leaves the coil off. The live readers
(pilot(), pp()) only sample. diag runs at the REPL, i.e. while the station's loop is
stopped; a later station tick drives every output from the charger again.
"""
import os

from firmware import diagfmt as _fmt
from firmware.compat import ticks_diff

echo = print            # where lines go (tests collect them)
ask = None              # callable(question) -> answer; None: input() at the REPL
board_factory = None    # service mode: callable returning the Board (default: the board file)
fs_root = None          # service flag directory (default: drivers.bootinfo.root)
service_store = None    # service mode: the Store (default: Store(board.storage_root()))

_svc = None             # the service-mode context, built on first use


# -- where the station and the board come from --------------------------------------------------
def _station():
    try:
        from firmware import station
    except ImportError:
        return None
    return station.current


def _bootinfo(load=False):
    # While a station runs, the boot record is the one boot.py started (already resident on
    # a board); a station without boot.py (the simulator) has none, and importing it would
    # only load the machine module's fake into the heap. Without a station (service mode),
    # or for the paths (load=True), diag reads it in.
    import sys
    bi = sys.modules.get("drivers.bootinfo")
    if bi is not None or (not load and _station() is not None):
        return bi
    try:
        from drivers import bootinfo
        return bootinfo
    except Exception:       # no drivers, or a port without the ESP32 machine module
        return None


def _board_from_file():
    bi = _bootinfo(load=True)
    if bi is None:
        raise RuntimeError("no board: drivers unavailable on this port")
    from drivers.boardfile import load
    from drivers.esp32_board import Esp32Board
    return Esp32Board(load(bi.path("board.json")), fs_root=bi.root)


class _Service:
    """What diag needs when no station runs: the board, the flash, the stored config."""

    def __init__(self, board):
        from firmware import config_store
        from firmware.board import LED_UNAVAILABLE, PILOT_STEADY_HIGH
        from firmware.storage import Store
        self.board = board
        board.set_contactor(False)
        board.set_pilot(PILOT_STEADY_HIGH)      # x1: the EV is visible, nothing offered
        board.set_led(LED_UNAVAILABLE)
        self.config_file = config_store.FILE
        self.store = service_store if service_store is not None \
            else Store(board.storage_root())
        # The station's load path: the same fallback (last valid copy, else the minimum).
        self.cfg, self.config_error = config_store.load(self.store)
        self.meter = None
        self.started_ms = board.ticks_ms()

    def set_config(self, changes):
        """Validate and store (not applied: no station runs). None or the reason."""
        from firmware import config_store
        from firmware.config import Config, ConfigError
        from firmware.storage import StorageError
        candidate = Config(self.cfg.changed_from_defaults())
        try:
            candidate.update(changes)
        except ConfigError as e:
            return str(e)
        ceiling = getattr(self.board, "rated_current_ma", None)
        for k in ("max_current_ma", "comms_fallback_ma"):
            # The station's guard (firmware/station.py): never above the hardware's rating.
            if ceiling is not None and k in changes and candidate[k] > ceiling:
                return "%s: %d above the hardware rating %d (board file rated_current_ma)" \
                    % (k, candidate[k], ceiling)
        try:
            config_store.save(self.store, candidate)
        except StorageError as e:
            return "config not stored: %s" % e
        self.cfg = candidate
        return None


def _service():
    global _svc
    if _svc is None:
        board = board_factory() if board_factory is not None else _board_from_file()
        _svc = _Service(board)
    return _svc


def _context():
    """(station or None, board, cfg)."""
    st = _station()
    if st is not None:
        return st, st.board, st.cfg
    svc = _service()
    return None, svc.board, svc.cfg


def _emit(lines):
    for line in lines:
        echo(line)


def _error(text):
    for line in _fmt.wrap(text, "  "):
        echo(line)


def _confirm(question):
    """True when the technician answers yes."""
    q = question + " [y/N] "
    try:
        answer = ask(q) if ask is not None else input(q)
    except (EOFError, KeyboardInterrupt):
        answer = ""
    return str(answer).strip().lower() in ("y", "yes")


def _is_bool(v):
    return v is True or v is False


def _is_int(v):
    return isinstance(v, int) and not _is_bool(v)


def _store():
    st = _station()
    return st.store if st is not None else _service().store


def _stopped_text():
    bi = _bootinfo()
    if bi is not None and getattr(bi, "interrupted_stop", False):
        return "STOPPED (Ctrl-C), contactor open; machine.reset() resumes"
    return None


def _blocking_names(st):
    from firmware import faults as _faults
    return _faults.names(st.faults.blocking())


# -- live board readings --------------------------------------------------------------------
def _duty(board, st=None):
    """What the board drives on the CP now (the board's record, not the charger's wish:
    after Ctrl-C main.py put the board to -12 V behind the charger's back)."""
    p = getattr(board, "pilot", None)
    if p is not None and hasattr(p, "duty_permille"):
        return p.duty_permille
    d = getattr(board, "duty", None)
    if d is not None:
        return d
    if st is not None:
        return st.charger.duty_pm
    return None


def _coil_closed(board, st=None):
    c = getattr(board, "contactor", None)
    if c is not None and hasattr(c, "closed"):
        return c.closed
    cmd = getattr(board, "contactor_cmd", None)
    if cmd is not None:
        return cmd
    return st.charger.contactor if st is not None else None


def _sample(board, n=3):
    out = []
    for _ in range(n):
        board.sample_pilot()
        out.append((board.cp_high_mv, board.cp_low_mv))
    return out


def _level(board, duty):
    from firmware.pilot import classify
    return classify(board.cp_high_mv, board.cp_low_mv, duty is not None and 0 < duty < 1000)


def _ev_absent(board, cfg):
    """True only when a fresh sample on a steady +12 V reads state A and (on a socket
    outlet) the PP reads no cable: the precondition for energising the contactor without
    a charging request."""
    from firmware.pilot import PILOT_A, PP_NO_CABLE, classify, pp_rating_ma
    if _duty(board) != 1000:
        return False
    board.sample_pilot()
    if classify(board.cp_high_mv, board.cp_low_mv, False) != PILOT_A:
        return False
    return not cfg["socket_outlet"] or pp_rating_ma(board.read_pp_ohms()) == PP_NO_CABLE


# -- the functions --------------------------------------------------------------------------
def help():
    _emit([_fmt.header("diag: charge-point diagnostics"),
           "  why()               why the station does not charge (one sentence)",
           "  status()            overview: state, contactor, faults, meter, backend",
           "  version()           firmware, build and MicroPython version",
           "  pilot()             live CP levels (V) and what they mean",
           "  pp()                live PP resistance and the cable rating",
           "  meter()             last meter reading and bus statistics",
           "  scan(first, last)   Modbus scan, 1..247 by default -> [addresses]",
           "  faults()            active faults with their text, history (flash)",
           "  clear(name)         clear a fault on site -> True/False",
           "  events(n)           the n newest events (flash, across reboots)",
           "  sessions(n)         the n newest charging sessions on flash",
           "  selftest()          RCD test, pilot levels, contactor cycle -> True/False",
           "  config(match)       configuration, secrets masked",
           "  set(key, value)     validate, store and apply one setting -> True/False",
           "  counters()          lifetime counters",
           "  service(on=True)    service mode on (False: off) and restart -> True/False",
           "  bringup()           guided new-board check, ticket line -> True/False",
           "Return None unless an arrow says otherwise. Docs: docs/diagnostics.md"])


def _link_text(link):
    if link is None:
        return None
    s = link.stats()
    text = s["state"]
    why = getattr(link, "disabled_reason", None)
    if why:
        text += " (will not connect: %s)" % why
    elif s.get("last_error"):
        text += " (last error: %s)" % s["last_error"]
    return text


def _wifi_text(board, cfg):
    if not cfg["wifi_ssid"]:
        return "not configured (wifi_ssid empty)"
    w = getattr(board, "wifi", None)
    if w is None:
        return "%s: no Wi-Fi on this board" % cfg["wifi_ssid"]
    try:
        wlan = w.wlan
        if not wlan.isconnected():
            return "%s: not connected (%d attempts)" % (w.ssid, w.attempts)
        ip = wlan.ifconfig()[0]
        try:
            rssi = "%d dBm" % wlan.status("rssi")
        except Exception:
            rssi = "RSSI unknown"
        return "%s: %s, %s" % (w.ssid, ip, rssi)
    except Exception as e:      # a driver without these calls: say so, do not fail
        return "%s: %s" % (cfg["wifi_ssid"], e)


def _clock_text(board):
    t = board.wall_time()
    if t is None:
        return "not set (times are boot number + uptime)"
    return _fmt.utc_text(t) + " UTC"


def _crash_line(board):
    # The ESP32 board reads drivers.bootinfo's crash file; the simulator's its own record.
    crash = board.last_crash()
    if crash:
        return crash.strip().split("\n")[-1]
    return None


def status():
    from firmware.config import warnings
    from firmware.version import VERSION, BUILD
    st, board, cfg = _context()
    d = {"station_id": cfg["station_id"], "version": "%s (%s)" % (VERSION, BUILD)}
    bi = _bootinfo()
    if st is not None:
        d.update(st.status())
        d["version"] = "%s (%s)" % (VERSION, BUILD)
        c = st.charger
        d["blocked"] = bool(st.faults.blocking())
        d["contactor"] = _coil_closed(board, st)
        d["temp_dc"] = c.temp_dc
        d["stopped"] = _stopped_text()
        if d["contactor"] != c.contactor or _duty(board, st) != c.duty_pm:
            # Ctrl-C: main.py put the board in its safe state after the last tick.
            d["note"] = "loop stopped, board made safe; the state is the last tick's"
        if st.meter is not None:
            m = st.meter
            d["meter"] = {"power_w": m.power_w, "import_wh": m.import_wh, "stale": m.stale}
        else:
            d["meter"] = None
        d["link"] = _link_text(st.link)
        d["boot"] = "%d, reset cause %s" % (st.boot_id, st.boot_report["reset_cause"])
        now = board.ticks_ms()
        d["uptime"] = _fmt.seconds(_uptime_ms(st, now))
        d["iterations"] = st.iterations
        d["config_error"] = st.config_error
        d["pending_reboot"] = getattr(st, "pending_reboot", None)
        if getattr(st, "ceiling_ma", None) is not None:
            d["rating_ma"] = st.ceiling_ma
            d["max_current_ma"] = cfg["max_current_ma"]
    else:
        svc = _service()
        d["service_mode"] = True
        d["service_reason"] = bi.service_reason if bi is not None and bi.service_mode \
            else "no station running"
        duty = _duty(board)
        _sample(board, 1)
        d["pilot"] = _fmt.LEVEL_TEXT[_level(board, duty)] + " (live)"
        d["contactor"] = _coil_closed(board)
        d["temp_dc"] = board.temperature_dc()
        d["reset_cause"] = bi.reset_cause if bi is not None else board.reset_cause()
        d["config_error"] = svc.config_error
        d["uptime"] = _fmt.seconds(ticks_diff(board.ticks_ms(), svc.started_ms))
    d["wifi"] = _wifi_text(board, cfg)
    d["clock"] = _clock_text(board)
    d["last_crash"] = _crash_line(board)
    d["warnings"] = warnings(cfg)
    if getattr(board, "has_mirror", True):
        d["mirror_closed"] = board.contactor_mirror_closed()
    name = getattr(board, "name", None)
    if name:
        d["board"] = name
    _emit(_fmt.status_lines(d))


def version():
    import sys
    from firmware.version import VERSION, BUILD
    impl = sys.implementation
    v = getattr(impl, "version", None)
    items = [("firmware", VERSION), ("build", BUILD),
             (impl.name, ".".join(str(x) for x in v[:3]) if v else "?"),
             ("platform", sys.platform)]
    detail = sys.version.split("; ", 1)
    if len(detail) > 1:
        items.append(("built", detail[1]))
    machine_name = getattr(impl, "_machine", None)
    if machine_name:
        items.append(("machine", machine_name))
    _emit([_fmt.header("version")] + _fmt.pairs(items))


def pilot(n=3):
    st, board, _ = _context()
    duty = _duty(board, st)
    samples = _sample(board, n if n > 0 else 1)
    level = _level(board, duty)
    from firmware.states import NAMES
    state = NAMES[st.charger.state] if st is not None else None
    _emit(_fmt.pilot_lines(samples, level, duty, state))


def pp():
    from firmware.pilot import pp_rating_ma
    _, board, cfg = _context()
    ohms = board.read_pp_ohms()
    _emit(_fmt.pp_lines(ohms, pp_rating_ma(ohms), cfg["socket_outlet"]))


def _meter_service(st, board, cfg):
    if st is not None:
        return st.meter
    svc = _service()
    if svc.meter is None:
        uart = board.meter_uart(cfg["meter_baud"], cfg["meter_parity"])
        if uart is None:
            return None
        from firmware.meter_service import MeterService
        svc.meter = MeterService(cfg, uart)
    return svc.meter


def _read_once(m, board, limit_ms=5000):
    # Service mode: nobody polls the meter, so run one read cycle here (bounded).
    readings = m.readings
    failed = m.cycles_failed
    start = board.ticks_ms()
    m.rebase()
    while m.readings == readings and m.cycles_failed == failed:
        now = board.ticks_ms()
        if ticks_diff(now, start) > limit_ms:
            break
        m.poll(now)
        board.feed_watchdog()
        board.sleep_ms(1)


def meter():
    st, board, cfg = _context()
    try:
        m = _meter_service(st, board, cfg)
    except ValueError as e:
        _error("meter: %s" % e)
        return
    if m is None:
        _emit([_fmt.header("energy meter"), "  none: the board has no RS-485 port"])
        return
    if st is None:
        _read_once(m, board)
    r = m.reading()
    if r["last_ok_ms"] is not None:
        r["last_ok_age"] = _fmt.age(board.ticks_ms(), r["last_ok_ms"], ticks_diff)
    else:
        r["last_ok_age"] = "never"
    _emit(_fmt.meter_lines(r, m.stats(), m.addr, cfg["meter_map"]))


_SCAN_PROGRESS = 10    # a progress line every this many addresses


def scan(first=1, last=247, timeout_ms=100):
    """Ask every address in first..last for one register (the meter map's first one);
    any answer, data or exception, means a device is there. Each address takes at most
    timeout_ms plus the frames' wire time, so 1..247 takes about 30 s at 9600 baud.
    Ctrl-C stops early and shows what was found."""
    from firmware import meters
    from firmware.modbus import DONE, ERROR, ERR_EXCEPTION, EXCEPTION_NAMES, ModbusMaster
    st, board, cfg = _context()
    for name, v in (("first", first), ("last", last), ("timeout_ms", timeout_ms)):
        if v is True or v is False or not isinstance(v, int):
            _error("scan: %s must be an integer" % name)
            return []
    if not 1 <= first <= last <= 247:
        _error("scan: need 1 <= first <= last <= 247")
        return []
    if not 10 <= timeout_ms <= 2000:
        _error("scan: timeout_ms must be 10..2000")
        return []
    stream = board.meter_uart(cfg["meter_baud"], cfg["meter_parity"])
    if stream is None:
        _error("scan: the board has no RS-485 port")
        return []
    fc, reg = 4, 0
    try:
        mp = meters.load_map(cfg["meter_map"], cfg["meter_custom_map"])
        fc, reg = mp.fc, mp.plan[0][0]
    except ValueError:
        pass
    # Our own master on the same bus: the station's meter service keeps its state, and a
    # transaction of its left half-done just times out and is retried.
    master = ModbusMaster(stream, baud=cfg["meter_baud"], parity=cfg["meter_parity"],
                          timeout_ms=timeout_ms, retries=0,
                          de=getattr(stream, "set_de", None))
    _emit([_fmt.header("Modbus scan %d..%d, FC%02d register %d, %d baud %s"
                       % (first, last, fc, reg, cfg["meter_baud"], cfg["meter_parity"]))])
    found = []
    addr = first
    try:
        while addr <= last:
            master.start_read(addr, fc, reg, 1)
            while True:
                status = master.poll(board.ticks_ms())
                if status == DONE or status == ERROR:
                    break
                board.feed_watchdog()
                board.sleep_ms(1)
            if status == DONE:
                found.append(addr)
                echo("  %3d  answers: register %d = %d" % (addr, reg, master.register(0)))
            elif master.error == ERR_EXCEPTION:
                found.append(addr)
                echo(_fmt.fit("  %3d  answers with exception %d (%s)" % (
                    addr, master.exception_code,
                    EXCEPTION_NAMES.get(master.exception_code, "unknown"))))
            if (addr - first + 1) % _SCAN_PROGRESS == 0 and addr < last:
                echo("  ... asked %d..%d, %d answered; Ctrl-C stops" % (first, addr,
                                                                      len(found)))
            addr += 1
    except KeyboardInterrupt:
        master.cancel()
        echo("  stopped at address %d" % addr)
        last = addr - 1
    s = master.stats()
    echo(_fmt.fit("  %d answered of %d asked; %d timeouts, %d crc errors, %d bad frames"
                  % (len(found), s["requests"], s["timeouts"], s["crc_errors"],
                     s["bad_frames"])))
    return found


def _uptime_ms(st, now):
    # The station counts its uptime (ticks_diff alone wraps after 6 days); the service-mode
    # stand-in has only its start time.
    up = getattr(st, "uptime_s", None)
    return up * 1000 if up is not None else ticks_diff(now, st.started_ms)


def _count(name, n, low=1, high=256):
    if not _is_int(n) or not low <= n <= high:
        _error("%s: n must be an integer %d..%d, e.g. %s(10)" % (name, low, high, name))
        return None
    return n


def _history(n, kinds=None):
    """The newest n records of the flash history (with the running station's buffer)."""
    from firmware import history
    st = _station()
    if st is not None and getattr(st, "history", None) is not None:
        return st.history.records(n, kinds), st.history
    return history.read(_service().store, n, kinds), None


def events(n=10):
    """The n newest events on flash (this boot and earlier ones), oldest first."""
    if _count("events", n) is None:
        return
    recs, h = _history(n)
    note = None
    if h is not None and h.lost:
        note = "%d records were not logged since boot (too many too fast)." % h.lost
    _emit(_fmt.history_lines("events (newest last)", recs, note))


def _fault_kinds():
    from firmware.events import EV_FAULT_CLEARED, EV_FAULT_RAISED
    from firmware.history import HK_BOOT
    return (EV_FAULT_RAISED, EV_FAULT_CLEARED, HK_BOOT)


def faults():
    st = _station()
    recs, _ = _history(16, _fault_kinds())
    if st is None:
        # Service mode: the latched faults a station restores at boot, from flash.
        from firmware.safestate import SafeState
        safe = SafeState(_service().store)
        safe.load()
        active = [code for code in range(1, 32) if safe.latched >> code & 1]
        lines = _fmt.active_fault_lines(active, "latched faults (back when the station"
                                                " starts)")
        lines += _fmt.history_lines("fault history (flash, newest last)", recs)
        crash = _crash_line(_service().board)
        if crash:
            lines += _fmt.pairs([("last crash", crash)])
        _emit(lines)
        return
    fs = st.faults
    active = [code for code in range(1, 32) if fs.active >> code & 1]
    counts = {}
    for code in range(1, len(fs.counts)):
        if fs.counts[code]:
            counts[code] = fs.counts[code]
    lines = _fmt.active_fault_lines(active)
    lines += _fmt.history_lines("fault history (flash, newest last)", recs)
    if counts:
        lines += _fmt.fault_count_lines(counts)
    _emit(lines)


def _fault_by_name(name, verb):
    from firmware import faults as _faults
    if not isinstance(name, str):
        _error("%s: the fault name is a string, e.g. %s(\"RCD_TRIPPED\")" % (verb, verb))
        return None
    try:
        return _faults.by_name(name.upper())
    except ValueError:
        from firmware.config import suggest
        near = suggest(name.upper(), [f.name for f in _faults.all_faults()])
        _error("%s: unknown fault %r; %s" % (
            verb, name, "did you mean %s?" % near if near else
            "known: " + ", ".join(f.name for f in _faults.all_faults())))
        return None


def _recheck(st, f):
    """Look at the cause of latched fault `f` again, now. None when it is gone, else why
    it is still there. The station's own record of the cause may be stale (the EV's
    diode shows only under PWM, the loop may be stopped): a clear trusts only this."""
    from firmware import faults as F
    board = st.board
    cfg = st.cfg
    code = f.code
    if _coil_closed(board, st):
        return "the contactor is closed: stop the charge first"
    if code == F.RCD_TRIPPED:
        return "the residual-current monitor still signals" if board.rcd_tripped() else None
    if code == F.CONTACTOR_WELDED or code == F.CONTACTOR_NOT_CLOSING:
        if getattr(board, "has_mirror", True) and board.contactor_mirror_closed():
            return "WELDED: the mirror contact reads closed with the coil off"
        if code == F.CONTACTOR_NOT_CLOSING and not _cycle_passed[0]:
            return "run diag.selftest() first: its contactor cycle re-checks the closing"
        return None
    if code == F.RCD_SELFTEST_FAILED:
        results = []
        _check_rcd(board, cfg, results, None)
        return None if results[-1][1] in ("PASS", "SKIP") else \
            "the monitor fails its test again: %s" % results[-1][2]
    if code == F.DIODE_FAULT:
        return _diode_check(board)
    return None


def _diode_check(board):
    # The diode shows only under PWM: drive 5 % (IEC 61851-1: digital communication, no
    # current offered by the duty) with the contactor open, read both plateaus, restore.
    from firmware.pilot import DIODE_FAULT, PILOT_A, classify
    duty = _duty(board)
    board.set_pilot(1000)
    board.sleep_ms(5)
    board.sample_pilot()
    if classify(board.cp_high_mv, board.cp_low_mv, False) == PILOT_A:
        board.set_pilot(duty if duty is not None else 1000)
        return None                        # no EV: no diode to fault
    try:
        board.set_pilot(50)
        board.sleep_ms(5)
        board.sample_pilot()
        h, l = board.cp_high_mv, board.cp_low_mv
    finally:
        board.set_pilot(duty if duty is not None else 1000)
    if classify(h, l, True) == DIODE_FAULT:
        return "under PWM the EV side still reads %s / %s: diode shorted or missing" % (
            _fmt.volts(h), _fmt.volts(l))
    return None


_cycle_passed = [False]     # a selftest() contactor cycle passed since import


def clear(name):
    """Clear a latched fault on site (also those the backend may not clear, such as
    CONTACTOR_WELDED after the contactor was replaced). Its cause is checked again first
    (the RCD line, the mirror contact, the diode under PWM, the monitor's test): refused
    while it is present."""
    st = _station()
    f = _fault_by_name(name, "clear")
    if f is None:
        return False
    if st is None:
        _error("clear: no station running; the latched faults come back when it starts,"
               " clear them there (diag.service(False))")
        return False
    now = st.board.ticks_ms()
    if not st.faults.is_active(f.code):
        _error("clear: %s is not active" % f.name)
        return False
    why = _recheck(st, f) if f.clearing != 0 else None
    if why:
        st.faults.raise_(f.code, now)        # the cause is present: active already, no event
        _error("clear: refused: %s: %s" % (f.name, why))
        return False
    st.faults.clear(f.code, now)             # checked: the cause is gone
    why = st.clear_fault(f.code, False, now)   # on flash before it returns: a reset keeps it
    if why:
        _error("clear: refused: %s" % why)
        return False
    echo("%s cleared" % f.name)
    return True


def config(match=None):
    from firmware.config import REBOOT, SCHEMA
    if match is not None and not isinstance(match, str):
        _error("config: match is a part of a key, e.g. config(\"meter\")")
        return
    _, _, cfg = _context()
    defaults = {}
    reboot = []
    for k in SCHEMA:
        defaults[k] = SCHEMA[k][0]
        if SCHEMA[k][3] & REBOOT:
            reboot.append(k)
    lines = _fmt.config_lines(cfg.public(), defaults, reboot, match)
    if match and lines[1] == "  no key matches":
        from firmware.config import suggest
        near = suggest(match, SCHEMA)
        if near:
            lines[1] = "  no key matches; did you mean %s?" % near
    _emit(lines)


_RAISE_ASKS = ("max_current_ma", "comms_fallback_ma")


def set(key, value, confirm=False):   # noqa: A001 - the REPL verb a technician expects
    """Validate, store and apply `key` = `value` through the station's config command (the
    same path as the backend's set_config command). A bad key or value changes nothing.
    Raising a current asks first (confirm=True answers yes in a script)."""
    from firmware.config import SCHEMA, is_secret, needs_reboot, unknown_key, warnings
    st = _station()
    if not isinstance(key, str):
        _error("set: the key must be a string, e.g. set(\"max_current_ma\", 16000)")
        return False
    if key not in SCHEMA:
        _error("set: refused: %s." % unknown_key(key))
        echo("  Nothing changed.")
        return False
    cfg = st.cfg if st is not None else _service().cfg
    old = cfg[key]
    if key in _RAISE_ASKS and _is_int(value) and value > old and confirm is not True:
        live = st is not None and _coil_closed(st.board, st)
        q = "raise %s from %s to %s%s?" % (key, _fmt.amps(old), _fmt.amps(value),
                                           " during a live charge" if live else "")
        if not _confirm(q):
            echo("set: not confirmed. Nothing changed.")
            return False
    if st is not None:
        why = st.cmd_set_config({key: value})
        cfg = st.cfg
    else:
        svc = _service()
        why = svc.set_config({key: value})
        cfg = svc.cfg
    if why:
        if isinstance(why, tuple):
            why = why[1]                     # (error code, reason) from the station
        _error("set: refused: %s." % why)
        echo("  Nothing changed.")
        return False
    shown = cfg.public([key])[key]
    if st is None:
        when = "stored; applies when the station starts"
    elif needs_reboot(key):
        when = "stored; applies after a reboot"
    else:
        when = "stored and applied"
    echo(_fmt.fit("%s = %s (%s)" % (key, "***" if is_secret(key) and shown else
                                    _fmt._value_text(shown), when)))
    for w in warnings(cfg):
        _error("warning: " + w)
    return True


def sessions(n=5):
    """The n newest charging sessions: finished records on flash (those the backend has
    acknowledged are gone from there; counters() has the totals) and the running one."""
    import json
    if _count("sessions", n, 1, 50) is None:
        return
    from firmware.session import JOURNAL_FILE
    from firmware.storage import Journal, StorageError
    st = _station()
    store = _store()
    pending = st.sessions._pending if st is not None else None
    recs = []
    try:
        for payload in Journal(store, JOURNAL_FILE).records():
            try:
                entry = json.loads(payload)
            except ValueError:
                continue
            if entry.get("k") == "done":
                rec = entry["r"]
                rec["pending"] = pending is None or rec.get("id") in pending
                recs = [r for r in recs if r.get("id") != rec.get("id")]
                recs.append(rec)
                if len(recs) > n:
                    recs.pop(0)
            elif entry.get("k") == "ack":
                for r in recs:
                    if r.get("id") == entry.get("id"):
                        r["pending"] = False
    except StorageError as e:
        _error("sessions: %s" % e)
    live = st.sessions.active if st is not None else None
    _emit(_fmt.session_lines(recs, live))


def counters():
    st, board, cfg = _context()
    if st is not None:
        v = st.counters.values()
        ob = st.outbox.stats()
        extra = [("control iterations", st.iterations),
                 ("uptime", _fmt.seconds(_uptime_ms(st, board.ticks_ms()))),
                 ("events", "%d pushed, %d overwritten" % (st.events.pushed,
                                                           st.events.dropped)),
                 ("outbox", "%d held, %d put, %d acked, %d resent" % (
                     ob["pending"], ob["put"], ob["acked"], ob["resends"])),
                 ("counter writes", st.counters.writes),
                 ("history", "%d flash writes, %d records not logged%s" % (
                     st.history.writes, st.history.lost,
                     ", error: %s" % st.history.error if st.history.error else ""))]
        if st.counters.error:
            extra.append(("counter error", st.counters.error))
    else:
        from firmware.counters import Counters
        svc = _service()
        c = Counters.from_config(cfg, svc.store)
        v = c.values()
        extra = [("note", "service mode: values as stored on flash")]
        if c.error:
            extra.append(("counter error", c.error))
    _emit(_fmt.counter_lines(v, extra))


# -- selftest ----------------------------------------------------------------------------------
def _wait(board, pred, limit_ms):
    """Sleep in 1 ms steps until pred() or limit_ms; the ms it took, or None on timeout."""
    start = board.ticks_ms()
    while True:
        took = ticks_diff(board.ticks_ms(), start)
        if pred():
            return took
        if took >= limit_ms:
            return None
        board.feed_watchdog()
        board.sleep_ms(1)


def _check_pilot(board, results):
    """Drive steady +12 V, steady -12 V and (with no EV) PWM, and read each back."""
    from firmware.pilot import (PILOT_A, PILOT_B, PILOT_C, PILOT_D, PILOT_F, classify)
    ev = None
    board.set_pilot(1000)
    board.sleep_ms(5)
    board.sample_pilot()
    hi = board.cp_high_mv
    lvl = classify(hi, board.cp_low_mv, False)
    ok = lvl in (PILOT_A, PILOT_B, PILOT_C, PILOT_D)
    ev = lvl != PILOT_A
    results.append(("pilot +12 V", "PASS" if ok else "FAIL",
                    "reads %s (%s)" % (_fmt.volts(hi), _fmt.LEVEL_TEXT[lvl])))
    board.set_pilot(0)
    board.sleep_ms(5)
    board.sample_pilot()
    lo = board.cp_high_mv
    ok = classify(lo, board.cp_low_mv, False) == PILOT_F
    results.append(("pilot -12 V", "PASS" if ok else "FAIL", "reads %s" % _fmt.volts(lo)))
    if ev:
        results.append(("pilot PWM", "SKIP", "EV connected: no PWM offered by the test"))
    else:
        # 10 % (6 A) to nobody: the EV side is open, so the plateaus read +12 / -12 V.
        board.set_pilot(100)
        board.sleep_ms(5)
        board.sample_pilot()
        h, l = board.cp_high_mv, board.cp_low_mv
        ok = classify(h, l, True) == PILOT_A and l <= -11000
        results.append(("pilot PWM 10 %", "PASS" if ok else "FAIL",
                        "high %s, low %s" % (_fmt.volts(h), _fmt.volts(l))))
    board.set_pilot(1000)
    board.sleep_ms(5)
    return ev


def _check_rcd(board, cfg, results, st):
    from firmware.events import EV_SELFTEST
    if not getattr(board, "has_rcd", True):
        results.append(("residual current", "SKIP", "the board has no monitor"))
        return
    limit = cfg["rcd_selftest_timeout_ms"]
    if board.rcd_tripped():
        results.append(("residual current", "FAIL", "trip line active before the test"))
        return
    board.set_rcd_test(True)
    try:
        took = _wait(board, board.rcd_tripped, limit)
    finally:
        board.set_rcd_test(False)
    released = _wait(board, lambda: not board.rcd_tripped(), limit) if took is not None \
        else None
    passed = took is not None and released is not None
    if took is None:
        detail = "no trip within %d ms of the test input" % limit
    elif released is None:
        detail = "tripped in %d ms, did not release" % took
    else:
        detail = "tripped in %d ms, released in %d ms" % (took, released)
    results.append(("residual current", "PASS" if passed else "FAIL", detail))
    if st is not None:
        st.events.push(board.ticks_ms(), EV_SELFTEST, 1 if passed else 0,
                       took if took is not None else limit)


def _check_contactor(board, cfg, results, st, ev, connector_parked):
    name = "contactor cycle"
    if not getattr(board, "has_mirror", True):
        results.append((name, "SKIP", "no mirror contact: closing proves nothing"))
        return
    if ev:
        results.append((name, "REFUSED", "EV connected: unplug it to run this check"))
        return
    if not cfg["socket_outlet"] and not connector_parked:
        # No PP to tell a parked connector from one in an EV, and an EV whose CP wire is
        # broken reads state A too: only the technician can say the connector is parked.
        results.append((name, "REFUSED", "tethered: selftest(connector_parked=True)"))
        return
    if board.contactor_mirror_closed():
        results.append((name, "FAIL", _WELDED + " (mirror closed, coil off)"))
        return
    if st is not None:
        from firmware.faults import CONTACTOR_WELDED, RCD_TRIPPED
        if st.faults.is_active(CONTACTOR_WELDED) or st.faults.is_active(RCD_TRIPPED):
            results.append((name, "REFUSED", "CONTACTOR_WELDED or RCD_TRIPPED active"))
            return
    if board.rcd_tripped() or not _ev_absent(board, cfg):
        results.append((name, "REFUSED", "EV, cable or residual current present"))
        return
    close_limit = cfg["contactor_close_timeout_ms"]
    open_limit = cfg["welded_check_ms"]
    aborted = [False]

    def closed_or_abort():
        if not _ev_absent(board, cfg) or board.rcd_tripped():
            aborted[0] = True
            board.set_contactor(False)
            return True
        return board.contactor_mirror_closed()

    board.set_contactor(True)
    try:
        closed = _wait(board, closed_or_abort, close_limit)
    finally:
        board.set_contactor(False)
    opened = _wait(board, lambda: not board.contactor_mirror_closed(), open_limit)
    if aborted[0]:
        results.append((name, "REFUSED", "EV or cable appeared: opened at once"))
    elif closed is None:
        results.append((name, "FAIL", "mirror not closed within %d ms" % close_limit))
    elif opened is None:
        results.append((name, "FAIL", _WELDED + " (still closed)"))
    else:
        _cycle_passed[0] = True
        results.append((name, "PASS", "closed in %d ms, opened in %d ms" % (closed, opened)))


_WELDED = "WELDED: outlet may be live"


def selftest(connector_parked=False):
    """Pilot output levels, then the residual-current monitor test, then (only with no EV
    and no cable) one contactor close/open with its mirror contact: each step only when
    every one before it passed. Leaves the contactor open. On a tethered cable the
    contactor cycle also needs connector_parked=True: the technician's word that the
    connector is in its holder, not in an EV."""
    if not _is_bool(connector_parked):
        _error("selftest: connector_parked must be True or False, e.g."
               " selftest(connector_parked=True); nothing was tested.")
        return False
    st, board, cfg = _context()
    duty = _duty(board, st)
    results = []
    _emit([_fmt.header("self-test")])
    if _coil_closed(board, st):
        _error("selftest: the contactor is closed (charging). Stop the session first.")
        echo("  nothing was tested")
        return False
    if board.contactor_mirror_closed():
        _error("selftest: %s: the mirror contact reads closed with the coil off (welded"
               " contacts). Isolate the supply and replace the contactor." % _WELDED)
        echo("  nothing was tested")
        return False
    try:
        ev = _check_pilot(board, results)
        if _all_passed(results):
            _check_rcd(board, cfg, results, st)
        else:
            results.append(("residual current", "SKIP", "a check before it failed"))
        if _all_passed(results):
            _check_contactor(board, cfg, results, st, ev, connector_parked)
        else:
            results.append(("contactor cycle", "SKIP",
                            "a check before it failed: coil not energised"))
    finally:
        board.set_contactor(False)
        board.set_rcd_test(False)
        if duty is not None:
            board.set_pilot(duty)
    tally = {"PASS": 0, "FAIL": 0, "REFUSED": 0, "SKIP": 0}
    for name, verdict, detail in results:
        echo(_fmt.check_line(name, verdict, detail))
        tally[verdict] += 1
    welded = board.contactor_mirror_closed()
    echo("  %d passed, %d failed, %d refused, %d skipped; %s" % (
        tally["PASS"], tally["FAIL"], tally["REFUSED"], tally["SKIP"],
        "coil off" if welded else "contactor open"))
    if welded:
        echo("  %s: the mirror contact reads closed with the coil off" % _WELDED)
    return tally["FAIL"] == 0 and not welded


def _all_passed(results):
    for r in results:
        if r[1] != "PASS" and r[1] != "SKIP":
            return False
    return True


def bringup(ask=input):
    """The guided check of a new board (drivers/bringup.py, docs/hardware.md)."""
    import sys
    from drivers import bringup as _b
    return _b.run(_context(), echo, ask, sys.modules[__name__])


# -- service mode -----------------------------------------------------------------------------
def _flag_path():
    bi = _bootinfo(load=True)
    root = fs_root if fs_root is not None else (bi.root if bi is not None else os.getcwd())
    if not root.endswith("/"):
        root += "/"
    flag = bi.DEFAULT_SERVICE_FLAG if bi is not None else "service"
    try:
        import json
        with open(root + "board.json") as f:
            svc = json.load(f).get("service")
        if isinstance(svc, dict) and svc.get("flag_file"):
            flag = svc["flag_file"]
    except (OSError, ValueError):
        pass
    return root + flag


def service(on=True):
    """on=True: create the service flag file and restart: boot.py then starts neither the
    application nor the watchdog (a quiet REPL; faults, events and sessions are read from
    flash). on=False: remove it and restart normally. A running charge is stopped only
    after the technician says yes; the contactor is opened (and the session, counters and
    history saved) before the restart."""
    if not _is_bool(on):
        _error("service: on must be True (enter service mode) or False (leave it), e.g."
               " service(False); nothing changed.")
        return False
    st = _station()
    if st is not None and on and _coil_closed(st.board, st):
        from firmware.states import NAMES
        c = st.charger
        if not _confirm("A charge is running (state %s, %s offered): stop it and restart"
                        " in service mode?" % (NAMES[c.state], _fmt.amps(c.offered_ma))):
            echo("service: not confirmed; the charge goes on.")
            return False
    path = _flag_path()
    done = "written" if on else "removed"
    try:
        if on:
            with open(path, "w") as f:
                f.write("service mode requested at the REPL\n")
        else:
            os.remove(path)
    except OSError as e:
        if on:
            _error("service: cannot write %s (%s)" % (path, e))
            return False
        done = "was not there"
    _emit(_fmt.wrap("service flag %s %s; restarting" % (path, done)))
    if st is not None:
        st.shutdown("service" if on else "reboot")
        board = st.board
    else:
        board = _service().board
        board.set_contactor(False)
    board.reset()
    return True


# -- why not charging --------------------------------------------------------------------------
def why():
    """One sentence: the cause that stops charging now, and what to do about it."""
    from firmware import states as S
    from firmware.charger import LIMIT_NAMES
    st = _station()
    w = {}
    if st is None:
        bi = _bootinfo()
        reason = bi.service_reason if bi is not None and bi.service_mode else None
        w["mode"] = ("Not charging: service mode (%s): the application does not run;"
                     " diag.service(False) restarts normally." % (reason or "no station"))
    else:
        c = st.charger
        if _stopped_text():
            w["mode"] = ("Not charging: stopped at the REPL (Ctrl-C), contactor open;"
                         " machine.reset() restarts the station.")
        w.update({
            "faults": _blocking_names(st), "available": c.available,
            "state": S.NAMES[c.state], "connected": S.ev_connected(c.state),
            "authorized": c.authorized, "auth_mode": st.cfg["auth_mode"],
            "paused": c.paused, "limit": LIMIT_NAMES[c.limit_why()],
            "limit_ma": c.effective_limit_ma(), "backend_ma": c.backend_limit_ma(),
            "comms_ma": st.cfg["comms_fallback_ma"], "offered_ma": c.offered_ma,
            "contactor": c.contactor, "requesting": S.ev_requesting(c.state),
            "backend": _link_text(st.link)})
    _emit(_fmt.wrap(_fmt.why_text(w)))
