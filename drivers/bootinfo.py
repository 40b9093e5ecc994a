"""What this boot found out, and what happens when the application dies.

boot.py calls `start()`; afterwards any module may read:
- `reset_cause`: "power_on", "hard", "watchdog", "deep_sleep", "soft" or "unknown";
- `service_mode` (and `service_reason`): the application and the watchdog stay off;
- `last_crash()`: the traceback text the previous run left in the crash file, or None
  (it stays until `clear_crash()`, so a report lost to another reset is not lost).

`crash(exc, board)` is main.py's last resort: contactor open, pilot to state F, traceback
to the crash file (at most CRASH_MAX_BYTES), then a reset after CRASH_RESET_DELAY_MS.
"""
import os
import sys

import machine

from drivers import clock

CRASH_FILE = "crash.txt"
CRASH_MAX_BYTES = 2048
CRASH_RESET_DELAY_MS = 3000
DEFAULT_SERVICE_FLAG = "service"

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
_contactor = None       # the Pin boot.py drove to "off"
_contactor_off = 0


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


def _service_pin_asserted(raw_board):
    svc = raw_board.get("service") if isinstance(raw_board, dict) else None
    if not isinstance(svc, dict) or svc.get("pin") is None:
        return False
    if 6 <= svc["pin"] <= 11:
        # The SPI flash: configuring it would stop the chip at every boot.
        raise ValueError("GPIO %d drives the SPI flash" % svc["pin"])
    pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(svc.get("pull", "up"))
    pin = machine.Pin(svc["pin"], machine.Pin.IN, pull)
    clock.source.sleep_ms(5)   # let the pull resistor charge the line
    return pin.value() == (1 if svc.get("active_high", False) else 0)


def start(raw_board=None, contactor=None, contactor_off=0, fs_root=None):
    """Called once by boot.py with the unvalidated board dict (or None) and the contactor
    Pin it already drove off. Decides service mode and reports the reset cause."""
    global root, reset_cause, service_mode, service_reason, started, _contactor, _contactor_off
    if fs_root is None:
        fs_root = os.getcwd()
    root = fs_root if fs_root.endswith("/") else fs_root + "/"
    _contactor = contactor
    _contactor_off = contactor_off
    reset_cause = cause_name(machine.reset_cause())
    flag = DEFAULT_SERVICE_FLAG
    if isinstance(raw_board, dict) and isinstance(raw_board.get("service"), dict):
        flag = raw_board["service"].get("flag_file") or flag
    service_mode = False
    service_reason = None
    if _exists(path(flag)):
        service_mode = True
        service_reason = "flag file %s" % path(flag)
    else:
        try:
            if _service_pin_asserted(raw_board):
                service_mode = True
                service_reason = "service pin held"
        except Exception as e:   # a bad service entry must not stop the boot
            print("boot: service pin unreadable:", e)
    started = True
    print("boot: reset cause %s" % reset_cause)
    crash = last_crash()
    if crash:
        lines = crash.strip().split("\n")
        print("boot: previous run crashed (%s): %s" % (path(CRASH_FILE), lines[-1]))
    if service_mode:
        print("boot: SERVICE MODE (%s): application and watchdog not started" % service_reason)
    return service_mode


def last_crash():
    try:
        with open(path(CRASH_FILE)) as f:
            return f.read()
    except OSError:
        return None


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
    """The application died: make safe, record, reset. Does not return on the device."""
    contactor_off(board)
    text = _traceback_text(exc)
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


def interrupted(board=None):
    contactor_off(board)
    print("stopped (Ctrl-C): contactor open. A running watchdog will reset the chip; "
          "create the service flag file for a quiet REPL.")
