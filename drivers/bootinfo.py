"""What this boot found out, and what happens when the application dies.

boot.py calls `start()`; afterwards any module may read:
- `reset_cause`: "power_on", "hard", "watchdog", "deep_sleep", "soft" or "unknown";
- `service_mode` (and `service_reason`): the application and the watchdog stay off;
- `crashes`: the crashes in a row before this boot (see below); `crash_loop` is True once
  they reach CRASH_LIMIT;
- `last_crash()`: the traceback text the previous run left in the crash file, or None
  (it stays until `clear_crash()`, so a report lost to another reset is not lost).

`crash(exc, board)` is main.py's last resort: contactor open, pilot to state F, traceback
to the crash file (at most CRASH_MAX_BYTES), then a reset after CRASH_RESET_DELAY_MS.

Crash loops: every crash() and every watchdog reset counts one crash in RTC memory, which
survives every reset but a power-on and needs no flash (a full or read-only flash must not
stop the count). main.py stays at the REPL (contactor off, no watchdog) once CRASH_LIMIT
crashes came in a row; `clean_run_timer()` empties the count after CLEAN_RUN_MS of
uninterrupted running. A power cycle or `clear_crashes()` + reset gives another try.
"""
import os
import sys

import machine

from drivers import clock

CRASH_FILE = "crash.txt"
CRASH_MAX_BYTES = 2048
CRASH_RESET_DELAY_MS = 3000
CRASH_LIMIT = 5             # crashes in a row after which main.py stays at the REPL
CLEAN_RUN_MS = 10 * 60000   # running this long without a crash empties the count
CLEAN_RUN_TIMER = 3         # the hardware timer for it (2 when the board's lock uses 3)
DEFAULT_SERVICE_FLAG = "service"
_RTC_TAG = b"cp-crashes:"   # RTC memory: _RTC_TAG + decimal count

_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deep_sleep",
    machine.SOFT_RESET: "soft",
}

root = "/"
reset_cause = "unknown"
service_mode = False
service_reason = None
started = False
crashes = 0
crash_loop = False
_contactor = None       # the Pin boot.py drove to "off"
_contactor_off = 0
_clean_timer = None


def cause_name(code):
    return _CAUSES.get(code, "unknown")


def path(name):
    return root + name


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _service_pin_asserted(board):
    svc = board.get("service") if isinstance(board, dict) else None
    if not isinstance(svc, dict) or svc.get("pin") is None:
        return False
    pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(svc.get("pull", "up"))
    pin = machine.Pin(svc["pin"], machine.Pin.IN, pull)
    clock.source.sleep_ms(5)   # let the pull resistor charge the line
    return pin.value() == (1 if svc.get("active_high", False) else 0)


def start(board=None, contactor=None, contactor_off=0, fs_root=None):
    """Called once by boot.py with the validated board (drivers.boardfile.load(); None when
    the file is bad: then no pin is touched here) and the contactor Pin it drove off.
    Decides service mode, counts crash loops and reports the reset cause."""
    global root, reset_cause, service_mode, service_reason, started, _contactor, _contactor_off
    global crashes, crash_loop
    if fs_root is None:
        fs_root = os.getcwd()
    root = fs_root if fs_root.endswith("/") else fs_root + "/"
    _contactor = contactor
    _contactor_off = contactor_off
    reset_cause = cause_name(machine.reset_cause())
    flag = DEFAULT_SERVICE_FLAG
    if isinstance(board, dict) and isinstance(board.get("service"), dict):
        flag = board["service"].get("flag_file") or flag
    service_mode = False
    service_reason = None
    if _exists(path(flag)):
        service_mode = True
        service_reason = "flag file %s" % path(flag)
    else:
        try:
            if _service_pin_asserted(board):
                service_mode = True
                service_reason = "service pin held"
        except Exception as e:   # a bad service entry must not stop the boot
            print("boot: service pin unreadable:", e)
    started = True
    crashes = _crash_count()
    if reset_cause == "watchdog":
        # A loop that hung: as much a crash as an exception, and it loops the same way.
        crashes += 1
        _set_crash_count(crashes)
    crash_loop = crashes >= CRASH_LIMIT
    print("boot: reset cause %s" % reset_cause)
    crash = last_crash()
    if crash:
        lines = crash.strip().split("\n")
        print("boot: previous run crashed (%s): %s" % (path(CRASH_FILE), lines[-1]))
    if crashes:
        print("boot: %d crash%s in a row (limit %d)" % (crashes, "" if crashes == 1 else "es",
                                                      CRASH_LIMIT))
    if service_mode:
        print("boot: SERVICE MODE (%s): application and watchdog not started" % service_reason)
    return service_mode


def _text(data):
    # Damaged flash can hand back any bytes: keep what is readable, never raise.
    try:
        return data.decode()
    except UnicodeError:
        return "".join(chr(b) if 32 <= b < 127 or b == 10 else "?" for b in data)


# What a crash report says when it is there but cannot be read into the heap: the crash is
# still reported (INTERNAL_ERROR at the next start), only without its traceback.
CRASH_UNREADABLE = "MemoryError: the crash report on flash did not fit the free heap"


def last_crash():
    try:
        with open(path(CRASH_FILE), "rb") as f:
            return _text(f.read())
    except OSError:
        return None
    except MemoryError:
        return CRASH_UNREADABLE


# -- the crash count (RTC memory) -------------------------------------------------------
def _crash_count():
    try:
        mem = machine.RTC().memory()
        if mem.startswith(_RTC_TAG):
            n = int(mem[len(_RTC_TAG):])
            if 0 <= n < 1000:
                return n
    except Exception:   # no RTC memory on this port, or garbage in it: no count
        pass
    return 0


def _set_crash_count(n):
    try:
        machine.RTC().memory(_RTC_TAG + str(n).encode())
    except Exception as e:
        print("crash count not kept:", e)


def clear_crashes():
    """Forget the crashes in a row (the technician's "try again", then machine.reset())."""
    global crashes, crash_loop
    crashes = 0
    crash_loop = False
    _set_crash_count(0)


def _clean_run(_timer):
    clear_crashes()


def clean_run_timer(board_cfg=None):
    """Arm a one-shot hardware timer that empties the crash count once the application
    has run CLEAN_RUN_MS without crashing. `board_cfg`: the validated board (its lock may
    own a timer). Returns the Timer, or None when none could be armed."""
    global _clean_timer
    if not crashes:
        return None
    tid = CLEAN_RUN_TIMER
    lock = board_cfg.get("lock") if isinstance(board_cfg, dict) else None
    if lock is not None and lock.get("timer_id") == tid:
        tid = tid - 1
    try:
        _clean_timer = machine.Timer(tid)
        _clean_timer.init(mode=machine.Timer.ONE_SHOT, period=CLEAN_RUN_MS,
                          callback=_clean_run)
    except Exception as e:
        print("main: crash count timer not armed:", e)
        _clean_timer = None
    return _clean_timer


def clear_crash():
    try:
        os.remove(path(CRASH_FILE))
    except OSError:
        pass


def _traceback_text(exc):
    try:
        import io
        buf = io.StringIO()
        if hasattr(sys, "print_exception"):
            sys.print_exception(exc, buf)
        else:   # CPython, for host tests
            # The ESP32 has no traceback module: MicroPython takes the branch above.
            import traceback  # pyright: ignore[reportMissingImports]
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=buf)
        # Stub defect: micropython-esp32-stubs' io.StringIO lacks getvalue(), which the
        # port has (py/objstringio.c: stringio_getvalue).
        return buf.getvalue()  # pyright: ignore[reportAttributeAccessIssue]
    except Exception:   # e.g. MemoryError: keep at least the type and message
        return "%s: %s\n" % (type(exc).__name__, exc)


def record_crash(text):
    """Write `text` to the crash file, keeping its end (the innermost frames and the
    message) when it is longer than CRASH_MAX_BYTES."""
    if len(text) > CRASH_MAX_BYTES:
        text = "...\n" + text[len(text) - CRASH_MAX_BYTES + 4:]
    try:
        with open(path(CRASH_FILE), "w") as f:
            f.write(text)
    except OSError as e:
        print("crash file not written:", e)


def contactor_off(board=None):
    """Open the contactor by every means available; never raises."""
    if _contactor is not None:
        try:
            _contactor.value(_contactor_off)
        except Exception:
            pass
    if board is not None:
        try:
            board.safe_state()
        except Exception:
            try:
                board.set_contactor(False)
            except Exception:
                pass


def crash(exc, board=None):
    """The application died: make safe, record, count, reset. Does not return on the
    device."""
    contactor_off(board)
    if _clean_timer is not None:
        try:
            _clean_timer.deinit()
        except Exception:
            pass
    _set_crash_count(crashes + 1)
    text = _traceback_text(exc)
    if crashes + 1 >= CRASH_LIMIT:
        print("FATAL: unhandled exception (%d in a row): after the reset the application"
              " stays off, at the REPL" % (crashes + 1))
    print("FATAL: unhandled exception, resetting in %d ms" % CRASH_RESET_DELAY_MS)
    print(text)
    record_crash("reset_cause=%s\n%s" % (reset_cause, text))
    # Wait in slices, feeding a running watchdog: the log line gets out, and a technician
    # can still hit Ctrl-C before the chip restarts.
    waited = 0
    while waited < CRASH_RESET_DELAY_MS:
        clock.source.sleep_ms(100)
        waited += 100
        if board is not None:
            try:
                board.feed_watchdog()
            except Exception:
                pass
    machine.reset()


def board_file_error(exc):
    """A bad board file will not get better by resetting: report it, record it, and stay
    at the REPL (no watchdog) so it can be fixed."""
    contactor_off(None)
    msg = "board file %s: %s" % (path("board.json"), exc.args[0] if exc.args else exc)
    print("ERROR:", msg)
    print("Fix the file (mpremote cp board.json :board.json) and reset.")
    record_crash("reset_cause=%s\n%s\n" % (reset_cause, msg))


def crash_loop_stop():
    """CRASH_LIMIT crashes in a row: resetting again would only repeat the crash (and
    cycle the contactor). Stay at the REPL with the contactor off and no watchdog."""
    contactor_off(None)
    crash = last_crash()
    last = crash.strip().split("\n")[-1] if crash else "no crash file"
    print("ERROR: %d crashes in a row (limit %d); the application stays off." % (crashes,
                                                                               CRASH_LIMIT))
    print("Last crash (%s): %s" % (path(CRASH_FILE), last))
    print("Fix the cause, then power-cycle, or run"
          " `from drivers import bootinfo; bootinfo.clear_crashes()` and reset.")


FEED_TIMERS = (1, 2, 3, 0)  # a hardware timer for the watchdog feed while interrupted
interrupted_stop = False   # Ctrl-C stopped the application (main.py)
_feed_timer = None


def _free_timer(board_cfg):
    used = [CLEAN_RUN_TIMER, CLEAN_RUN_TIMER - 1] if _clean_timer is not None else []
    lock = board_cfg.get("lock") if isinstance(board_cfg, dict) else None
    if lock is not None:
        used.append(lock.get("timer_id"))
    for tid in FEED_TIMERS:
        if tid not in used:
            return tid
    return None


def _keep_fed(board):
    """The watchdog cannot be stopped once started: feed it from a timer so that the
    technician's REPL is not wiped by a reset (which would resume charging) while the
    station stays stopped. A soft timer's callback runs while the REPL waits for input."""
    global _feed_timer
    if board is None or getattr(board, "_wdt", None) is None:
        return None
    tid = _free_timer(getattr(board, "cfg", None))
    if tid is None:
        return None
    period = max(100, board.watchdog_ms // 4)
    try:
        _feed_timer = machine.Timer(tid)
        _feed_timer.init(mode=machine.Timer.PERIODIC, period=period,
                         callback=lambda _t: board.feed_watchdog())
    except Exception as e:
        print("main: watchdog feed timer not armed:", e)
        _feed_timer = None
    return _feed_timer


def interrupted(board=None):
    """Ctrl-C at the REPL stopped the application: it stays stopped, contactor open, until
    the technician resets (machine.reset(), diag.service()). The opening is counted in the
    contactor wear counters (under load when the EV was drawing current) and the history
    and counters are written to flash; the watchdog is fed from a timer meanwhile."""
    global interrupted_stop
    contactor_off(board)
    interrupted_stop = True
    try:
        from firmware import station
        if station.current is not None:
            station.current.interrupted()
    except Exception as e:   # the contactor is open; the record is secondary
        print("main: stop not recorded:", e)
    fed = _keep_fed(board) is not None
    print("stopped (Ctrl-C): contactor open%s." % (", watchdog fed" if fed else ""))
    print("The station stays stopped until machine.reset(). import diag; diag.help()")
