"""diag's hardware commands: pilot(), pp(), meter(), scan(), clear(), selftest() and
bringup(). Imported by `diag` when one of them is first used (see diag.py); the settings
(echo, ask, ...) are diag's."""
import diag as _d
from diag import _coil_closed, _context, _duty, _emit, _fmt, _level, _sample, _service, _station
from diag_support import _error, _is_bool
from firmware.compat import ticks_diff

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
                _d.echo("  %3d  answers: register %d = %d" % (addr, reg, master.register(0)))
            elif master.error == ERR_EXCEPTION:
                found.append(addr)
                _d.echo(_fmt.fit("  %3d  answers with exception %d (%s)" % (
                    addr, master.exception_code,
                    EXCEPTION_NAMES.get(master.exception_code, "unknown"))))
            if (addr - first + 1) % _SCAN_PROGRESS == 0 and addr < last:
                _d.echo("  ... asked %d..%d, %d answered; Ctrl-C stops" % (first, addr,
                                                                      len(found)))
            addr += 1
    except KeyboardInterrupt:
        master.cancel()
        _d.echo("  stopped at address %d" % addr)
        last = addr - 1
    s = master.stats()
    _d.echo(_fmt.fit("  %d answered of %d asked; %d timeouts, %d crc errors, %d bad frames"
                  % (len(found), s["requests"], s["timeouts"], s["crc_errors"],
                     s["bad_frames"])))
    return found


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
    _d.echo("%s cleared" % f.name)
    return True


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
        _d.echo("  nothing was tested")
        return False
    if board.contactor_mirror_closed():
        _error("selftest: %s: the mirror contact reads closed with the coil off (welded"
               " contacts). Isolate the supply and replace the contactor." % _WELDED)
        _d.echo("  nothing was tested")
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
        _d.echo(_fmt.check_line(name, verdict, detail))
        tally[verdict] += 1
    welded = board.contactor_mirror_closed()
    _d.echo("  %d passed, %d failed, %d refused, %d skipped; %s" % (
        tally["PASS"], tally["FAIL"], tally["REFUSED"], tally["SKIP"],
        "coil off" if welded else "contactor open"))
    if welded:
        _d.echo("  %s: the mirror contact reads closed with the coil off" % _WELDED)
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
    return _b.run(_context(), _d.echo, ask, _d)
