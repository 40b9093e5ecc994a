"""The bring-up of a new board at the REPL:  import diag; diag.bringup()

A guided check a technician runs once per board (docs/hardware.md, "Bring-up"): every step
prints PASS/FAIL/SKIP with the figure it measured, the run ends with one line to paste into
a support ticket, and the same figures go to the flash as bringup.json for the backend.

Steps: free heap after import; ADC time per CP sample; CP plateaus at 5, 10, 50, 96 and
100 % duty with no EV, then with the 2.74 kOhm test resistor the technician plugs when
asked (state B); PP; the residual-current test input and the contactor cycle with its
mirror (diag's self-test checks, same refusals); the meter's answer on the bus; the safety
tick's p50/p99/max over 10 s; the longest GC pause; Wi-Fi and broker reachability.

Safety: the contactor is closed only by diag's contactor check (no EV, no cable, mirror
open). The safety tick is timed only with no EV connected (the charger then never closes
the contactor); the pilot and the coil are put back as found, the coil open.
"""
import gc
import json
import time

from firmware.compat import ticks_diff

DUTIES = (50, 100, 500, 960, 1000)      # permille: 5, 10, 50, 96, 100 %
HEAP_MIN = 20000                        # free bytes after import a session needs at least
ADC_MAX_US = 2000                       # one CP sample (both plateaus) in a 10 ms tick
TICK_P99_MAX_US = 5000
GC_MAX_US = 10000
TICK_WINDOW_MS = 10000
FILE = "bringup.json"


def _us():
    return time.ticks_us()


class _Run:
    def __init__(self, echo):
        self.echo = echo
        self.steps = []          # (name, verdict, figure text)
        self.figures = {}

    def add(self, name, verdict, detail, **figures):
        self.steps.append((name, verdict, detail))
        self.figures.update(figures)
        self.echo("  %-22s %-5s %s" % (name, verdict, detail))


def _v(ok):
    return "PASS" if ok else "FAIL"


def _plateaus(board, duty):
    board.set_pilot(duty)
    board.sleep_ms(5)
    board.feed_watchdog()
    board.sample_pilot()
    return board.cp_high_mv, board.cp_low_mv


def _cp_sweep(r, board, tag, high_range):
    """CP plateaus at every duty; PASS when the high plateau is in high_range and, with
    PWM, the low one reads -12 V (the EV diode does not change it)."""
    lo_h, hi_h = high_range
    for duty in DUTIES:
        h, l = _plateaus(board, duty)
        pwm = duty < 1000
        ok = lo_h <= h <= hi_h and (not pwm or l <= -11000)
        pct = duty // 10
        key = "cp_%s_%d" % (tag, pct)
        r.add("CP %s %d %%" % (tag, pct), _v(ok),
              "high %d mV, low %s" % (h, ("%d mV" % l) if pwm else "-"),
              **{key: [h, l if pwm else None]})


def _ask(ask, text):
    try:
        return ask(text + " [Enter / s = skip] ").strip().lower() != "s"
    except EOFError:
        return False


def run(ctx, echo, ask, diag):
    """ctx: diag's (station or None, board, cfg); ask: input(); diag: the diag module, whose
    self-test checks and meter reader this reuses."""
    st, board, cfg = ctx
    r = _Run(echo)
    echo("== bring-up " + "=" * 56)
    gc.collect()
    free = gc.mem_free()
    r.add("heap after import", _v(free >= HEAP_MIN), "%d bytes free" % free, heap_free=free)

    duty0 = diag._duty(board, st)
    try:
        # ADC: one CP sample (both plateaus, the board's averaging) timed over 20.
        t = _us()
        for _ in range(20):
            board.sample_pilot()
        per = ticks_diff(_us(), t) // 20
        r.add("ADC per CP sample", _v(per <= ADC_MAX_US), "%d us" % per, adc_us=per)

        from firmware.pilot import PILOT_A, PILOT_B
        _plateaus(board, 1000)
        ev = diag._level(board, 1000)
        if ev != PILOT_A:
            r.add("CP no EV", "FAIL", "reads an EV or a fault: unplug and run again")
        else:
            _cp_sweep(r, board, "open", (11000, 13000))
            if _ask(ask, "Plug the 2.74 kOhm resistor CP-PE, then Enter"):
                _plateaus(board, 1000)
                if diag._level(board, 1000) != PILOT_B:
                    r.add("CP resistor", "FAIL", "does not read state B (9 V): %d mV"
                          % board.cp_high_mv, cp_resistor_mv=board.cp_high_mv)
                else:
                    _cp_sweep(r, board, "2k74", (8000, 10000))
                _ask(ask, "Remove the resistor, then Enter")
            else:
                r.add("CP resistor", "SKIP", "skipped by the technician")

        ohms = board.read_pp_ohms()
        from firmware.pilot import PP_ERROR, pp_rating_ma
        rating = pp_rating_ma(ohms)
        r.add("PP", _v(rating != PP_ERROR), "%s ohm, rating %s mA" % (ohms, rating),
              pp_ohms=ohms)

        res = []
        diag._check_rcd(board, cfg, res, st)
        board.set_pilot(1000)
        board.sleep_ms(5)
        board.sample_pilot()
        ev_now = diag._level(board, 1000) != PILOT_A
        diag._check_contactor(board, cfg, res, st, ev_now, False)
        for name, verdict, detail in res:
            r.add(name, verdict, detail, **{name.replace(" ", "_"): verdict})
    finally:
        board.set_contactor(False)
        board.set_rcd_test(False)
        if duty0 is not None:
            board.set_pilot(duty0)

    _meter(r, st, board, cfg, diag)
    _tick(r, st, board)
    _gc(r)
    _network(r, st, board)

    fails = sum(1 for s in r.steps if s[1] == "FAIL")
    passes = sum(1 for s in r.steps if s[1] == "PASS")
    verdict = "PASS" if fails == 0 else "FAIL"
    f = r.figures
    # One line under 80 columns: board, verdict, passed/failed, heap bytes, then us.
    line = "BRINGUP %s %s %d/%d heap=%s adc=%s tick=%s/%s/%s gc=%s" % (
        getattr(board, "name", "board"), verdict, passes, fails, f.get("heap_free"),
        f.get("adc_us"), f.get("tick_p50_us"), f.get("tick_p99_us"), f.get("tick_max_us"),
        f.get("gc_max_us"))
    rec = {"verdict": verdict, "pass": passes, "fail": fails, "figures": f,
           "steps": [list(s) for s in r.steps]}
    path = _save(board, rec)
    echo("saved to the flash: %s" % (path if len(path) < 60 else FILE))
    echo("paste into the support ticket:")
    echo(line)
    return fails == 0


def _meter(r, st, board, cfg, diag):
    try:
        m = diag._meter_service(st, board, cfg)
    except ValueError as e:
        r.add("meter", "FAIL", str(e))
        return
    if m is None:
        r.add("meter", "SKIP", "no meter configured")
        return
    before = m.readings
    diag._read_once(m, board)
    ok = m.readings != before
    r.add("meter", _v(ok), "answered, import %s Wh" % m.import_wh if ok else
          "no answer from address %d" % cfg["meter_addr"], meter_ok=ok)


def _tick(r, st, board):
    if st is None:
        r.add("safety tick", "SKIP", "service mode: no station to time")
        return
    from firmware.pilot import PILOT_A
    board.set_pilot(1000)
    board.sleep_ms(5)
    board.sample_pilot()
    if diag_level(board) != PILOT_A:
        r.add("safety tick", "SKIP", "EV connected: timing runs with no EV only")
        return
    from firmware.station import TICK_MS
    times = []
    start = board.ticks_ms()
    while ticks_diff(board.ticks_ms(), start) < TICK_WINDOW_MS:
        t = _us()
        st.safety_tick(board.ticks_ms())
        times.append(ticks_diff(_us(), t))
        board.sleep_ms(TICK_MS)
    board.set_contactor(False)
    times.sort()
    p50 = times[len(times) // 2]
    p99 = times[(len(times) * 99) // 100]
    mx = times[-1]
    r.add("safety tick", _v(p99 <= TICK_P99_MAX_US),
          "p50 %d / p99 %d / max %d us (%d ticks)" % (p50, p99, mx, len(times)),
          tick_p50_us=p50, tick_p99_us=p99, tick_max_us=mx)


def diag_level(board):
    from firmware.pilot import classify
    return classify(board.cp_high_mv, board.cp_low_mv, False)


def _gc(r):
    worst = 0
    junk = []
    for _ in range(5):
        junk = [bytearray(64) for _ in range(50)]
        t = _us()
        gc.collect()
        worst = max(worst, ticks_diff(_us(), t))
    del junk
    r.add("longest GC pause", _v(worst <= GC_MAX_US), "%d us" % worst, gc_max_us=worst)


def _network(r, st, board):
    w = getattr(board, "wifi", None)
    if w is None:
        r.add("Wi-Fi", "SKIP", "not configured (wifi_ssid)")
    else:
        up = w.wlan.isconnected()
        r.add("Wi-Fi", _v(up), "connected" if up else "not connected", wifi_up=up)
    link = st.link if st is not None else None
    if link is None:
        r.add("broker", "SKIP", "no backend configured (mqtt_host)")
        return
    s = link.stats()
    r.add("broker", _v(link.online), "%s%s" % (
        s["state"], "" if link.online else ", %s" % s["last_error"]), broker_up=link.online)


def _save(board, rec):
    root = board.storage_root() if hasattr(board, "storage_root") else "/"
    path = root.rstrip("/") + "/" + FILE
    with open(path, "w") as f:
        f.write(json.dumps(rec))
    return path
