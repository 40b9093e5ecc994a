"""diag's records and settings: events(), faults(), config(), set(), sessions(),
counters() and service(). Imported by `diag` when one of them is first used (see diag.py);
the settings (echo, ask, ...) are diag's."""
import os

import diag as _d
from diag import _bootinfo, _coil_closed, _context, _emit, _fmt, _service, _station
from diag_support import _confirm, _crash_line, _error, _is_bool, _is_int, _store, _uptime_ms

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


def config(match=None):
    from firmware.config import keys, needs_reboot
    from firmware.config import default as _default
    if match is not None and not isinstance(match, str):
        _error("config: match is a part of a key, e.g. config(\"meter\")")
        return
    _, _, cfg = _context()
    defaults = {}
    reboot = []
    for k in keys():
        defaults[k] = _default(k)
        if needs_reboot(k):
            reboot.append(k)
    lines = _fmt.config_lines(cfg.public(), defaults, reboot, match)
    if match and lines[1] == "  no key matches":
        from firmware.config import suggest
        near = suggest(match, keys())
        if near:
            lines[1] = "  no key matches; did you mean %s?" % near
    _emit(lines)


_RAISE_ASKS = ("max_current_ma", "comms_fallback_ma")


def set(key, value, confirm=False):   # noqa: A001 - the REPL verb a technician expects
    """Validate, store and apply `key` = `value` through the station's config command (the
    same path as the backend's set_config command). A bad key or value changes nothing.
    Raising a current asks first (confirm=True answers yes in a script)."""
    from firmware.config import is_secret, needs_reboot, spec, unknown_key, warnings
    st = _station()
    if not isinstance(key, str):
        _error("set: the key must be a string, e.g. set(\"max_current_ma\", 16000)")
        return False
    if spec(key) is None:
        _error("set: refused: %s." % unknown_key(key))
        _d.echo("  Nothing changed.")
        return False
    cfg = st.cfg if st is not None else _service().cfg
    old = cfg[key]
    if key in _RAISE_ASKS and _is_int(value) and value > old and confirm is not True:
        live = st is not None and _coil_closed(st.board, st)
        q = "raise %s from %s to %s%s?" % (key, _fmt.amps(old), _fmt.amps(value),
                                           " during a live charge" if live else "")
        if not _confirm(q):
            _d.echo("set: not confirmed. Nothing changed.")
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
        _d.echo("  Nothing changed.")
        return False
    shown = cfg.public([key])[key]
    if st is None:
        when = "stored; applies when the station starts"
    elif needs_reboot(key):
        when = "stored; applies after a reboot"
    else:
        when = "stored and applied"
    _d.echo(_fmt.fit("%s = %s (%s)" % (key, "***" if is_secret(key) and shown else
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
        ob = st.outbox.stats() if st.outbox is not None else None    # None: OCPP
        extra = [("control iterations", st.iterations),
                 ("uptime", _fmt.seconds(_uptime_ms(st, board.ticks_ms()))),
                 ("events", "%d pushed, %d overwritten" % (st.events.pushed,
                                                           st.events.dropped)),
                 ("outbox", "%d held, %d put, %d acked, %d resent" % (
                     ob["pending"], ob["put"], ob["acked"], ob["resends"]) if ob else "none"),
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


def _flag_path():
    bi = _bootinfo(load=True)
    root = _d.fs_root if _d.fs_root is not None else (bi.root if bi is not None else os.getcwd())
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
            _d.echo("service: not confirmed; the charge goes on.")
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
