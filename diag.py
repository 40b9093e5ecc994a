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

Resident after `import diag`: this module (status(), why(), help(), version()); the other
commands are in diag_check.py (the hardware: pilot, pp, meter, scan, clear, selftest,
bringup) and diag_records.py (events, faults, config, set, sessions, counters, service),
imported on their first use, so that the heap a running station shares holds only what the
technician uses.

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


def status():
    from firmware.config import warnings
    from firmware.version import VERSION, BUILD
    st, board, cfg = _context()
    d = {"station_id": cfg["station_id"], "version": "%s (%s)" % (VERSION, BUILD)}
    bi = _bootinfo()
    report = None
    if st is not None:
        # The station's own report and these lines stay two dicts, read as one: merged,
        # they were one table of 30 keys (296 B), the block a full heap lacked.
        report = st.status()
        c = st.charger
        d["blocked"] = bool(st.faults.blocking())
        d["contactor"] = _coil_closed(board, st)
        d["temp_dc"] = c.temp_dc
        d["stopped"] = _sup()._stopped_text()
        if d["contactor"] != c.contactor or _duty(board, st) != c.duty_pm:
            # Ctrl-C: main.py put the board in its safe state after the last tick.
            d["note"] = "loop stopped, board made safe; the state is the last tick's"
        if st.meter is not None:
            m = st.meter
            d["meter"] = {"power_w": m.power_w, "import_wh": m.import_wh, "stale": m.stale}
        else:
            d["meter"] = None
        d["unbilled_wh"] = st.counters.unbilled_wh
        d["link"] = _sup()._link_text(st.link)
        d["boot"] = "%d, reset cause %s" % (st.boot_id, st.boot_report["reset_cause"])
        now = board.ticks_ms()
        d["uptime"] = _fmt.seconds(_sup()._uptime_ms(st, now))
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
    d["wifi"] = _sup()._wifi_text(board, cfg)
    d["clock"] = _sup()._clock_text(board)
    d["last_crash"] = _sup()._crash_line(board)
    d["warnings"] = warnings(cfg)
    if getattr(board, "has_mirror", True):
        d["mirror_closed"] = board.contactor_mirror_closed()
    name = getattr(board, "name", None)
    if name:
        d["board"] = name
    _emit(_fmt.status_lines(d if report is None else _sup().Both(d, report)))


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
        if _sup()._stopped_text():
            w["mode"] = ("Not charging: stopped at the REPL (Ctrl-C), contactor open;"
                         " machine.reset() restarts the station.")
        w.update({
            "faults": _sup()._blocking_names(st), "available": c.available,
            "state": S.NAMES[c.state], "connected": S.ev_connected(c.state),
            "authorized": c.authorized, "auth_mode": st.cfg["auth_mode"],
            "paused": c.paused, "limit": LIMIT_NAMES[c.limit_why()],
            "limit_ma": c.effective_limit_ma(), "backend_ma": c.backend_limit_ma(),
            "comms_ma": st.cfg["comms_fallback_ma"], "offered_ma": c.offered_ma,
            "contactor": c.contactor, "requesting": S.ev_requesting(c.state),
            "backend": _sup()._link_text(st.link)})
    _emit(_fmt.wrap(_fmt.why_text(w)))


# -- the rest, imported when a command of it runs ------------------------------------------------
# `import diag` and status() keep only this module in the heap (the ESP32's first heap area is
# 56 KB and the station runs meanwhile); the other commands live in two submodules that
# diag.<name> imports on first use (module __getattr__, MicroPython's MICROPY_MODULE_GETATTR).
_PARTS = (
    ("diag_check", ("pilot", "pp", "meter", "scan", "clear", "selftest", "bringup",
                    "_meter_service", "_read_once", "_fault_by_name", "_recheck",
                    "_diode_check", "_ev_absent", "_wait", "_check_pilot", "_check_rcd",
                    "_check_contactor", "_all_passed")),
    ("diag_records", ("events", "faults", "config", "set", "sessions", "counters",
                      "service", "_count", "_history", "_fault_kinds", "_flag_path")),
    ("diag_support", ("_error", "_confirm", "_is_bool", "_is_int", "_store", "_stopped_text",
                      "_blocking_names", "_link_text", "_wifi_text", "_clock_text",
                      "_crash_line", "_uptime_ms")),
)


def _sup():
    import diag_support
    return diag_support


def __getattr__(name):
    for part, names in _PARTS:
        if name in names:
            return getattr(__import__(part), name)
    raise AttributeError(name)
