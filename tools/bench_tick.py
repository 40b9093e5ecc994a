"""Benchmarks of the safety tick, on the MicroPython unix port, in simulated time.

    micropython -m tools.bench_tick STORAGE_DIR [quick]

Prints one JSON line: {"reaction": ..., "pwm_off": ..., "alloc": ..., "timing": ...}.
Run by tools/bench.py (docs/performance.md explains every figure).

- reaction: for every sequence that must open the contactor "at once" (IEC 61851-1
  Annex A: C->B, C->A, CP wire open, PE lost, E, diode fault / F, residual-current trip,
  over-temperature stop) a fresh Station is brought to charging on the SimBoard; the
  stimulus is then applied at every 1 ms phase of the 10 ms control period (0 = just after
  a sample, the worst case) and the time to the contactor coil command "open" is taken in
  simulated ms.
- pwm_off: the 6 s rule (PWM switched off, the EV stays in C), reported on its own.
- alloc: Station.safety_tick() under micropython.heap_lock() through every state and fault
  path above (a MemoryError is an allocation), then gc.mem_alloc() over the same ticks
  with the collector off: bytes allocated per tick.
- timing: time.ticks_us() around each of those ticks (median, p99, max).
"""
import gc
import json
import sys
import time

import micropython

from firmware.safestate import FILE as SAFESTATE_FILE
from firmware.states import NAMES
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.pilotsim.model import S2_C, S2_D, S2_OPEN
from tools.pilotsim.simboard import SimBoard

CLOSE_LIMIT_MS = 5000       # a trial that does not reach charging in this long is broken
OPEN_LIMIT_MS = 1000        # ... or does not open in this long

# (sequence id, what is done to the board) - ids as in the Annex A report where they exist.
SEQUENCES = (
    ("c_to_b_open", "ev opens S2 (C->B)"),
    ("c_to_a_open", "unplug (C->A)"),
    ("cp_open_open", "CP wire broken (reads A)"),
    ("pe_loss_open", "PE lost (reads A)"),
    ("cp_short_open", "CP shorted to PE (E)"),
    ("diode_fault_open", "EV diode shorted (F)"),
    ("rcd_trip_open", "residual-current trip"),
    ("overtemp_stop", "temperature reaches temp_stop_dc"),
)


def _stimulus(seq, board):
    m = board.model
    if seq == "c_to_b_open":
        m.s2 = S2_OPEN
    elif seq == "c_to_a_open":
        m.plugged = False
        m.s2 = S2_OPEN
    elif seq == "cp_open_open":
        m.cp_open = True
    elif seq == "pe_loss_open":
        m.pe_loss = True
    elif seq == "cp_short_open":
        m.cp_short_pe = True
    elif seq == "diode_fault_open":
        m.diode_short = True
    elif seq == "rcd_trip_open":
        board.rcd_fault = True
    elif seq == "overtemp_stop":
        # over_ms 0: the sensor shows the new value 1 ms later (the ramp's resolution).
        board.ramp_temperature(board.stop_dc + 10, 0)
        return 1
    m.update()
    return 0


class _Rig:
    def __init__(self, storage, config=None):
        # Every trial starts without latched faults: the previous trial's trip or diode
        # fault would outlive the "reset" between trials (firmware/safestate.py).
        Store(storage).remove(SAFESTATE_FILE)
        self.board = SimBoard()
        self.station = Station(self.board, config=config, store=Store(storage))
        self.board.stop_dc = self.station.cfg["temp_stop_dc"]

    def step(self):
        self.station.step()
        self.board.sleep_ms(TICK_MS)

    def until(self, pred, limit_ms):
        t = 0
        while t <= limit_ms:
            if pred():
                return t
            self.step()
            t += TICK_MS
        return None

    def charge(self):
        m = self.board.model
        self.step()
        m.plugged = True
        m.s2 = S2_C
        m.update()
        if self.until(lambda: self.board.contacts_closed, CLOSE_LIMIT_MS) is None:
            raise RuntimeError("the station did not close the contactor in C")
        for _ in range(20):         # charging for a while, offer settled
            self.step()


def reaction(storage, phases):
    """{seq: {"max_ms", "min_ms", "by_phase": [...]}} in simulated ms."""
    out = {}
    for seq, title in SEQUENCES:
        times = []
        for phase in phases:
            r = _Rig(storage)
            r.charge()
            b = r.board
            # The loop has just sampled at b.now_ms - TICK_MS; move to the phase within
            # the period, change the world, then finish the period.
            sampled = b.now_ms - TICK_MS
            b.now_ms = sampled + phase
            t_stim = b.now_ms + _stimulus(seq, b)
            b.now_ms = sampled + TICK_MS
            took = r.until(lambda: not b.contactor_cmd, OPEN_LIMIT_MS)
            if took is None:
                raise RuntimeError("%s: the contactor did not open" % seq)
            # The coil command went out in the tick at b.now_ms - TICK_MS (step() sleeps
            # after the tick).
            times.append(b.now_ms - TICK_MS - t_stim)
        out[seq] = {"title": title, "max_ms": max(times), "min_ms": min(times),
                    "by_phase": times}
    return out


def pwm_off(storage):
    """Backend stop while charging, EV stays in C: PWM off -> coil off, simulated ms."""
    r = _Rig(storage)
    r.charge()
    b = r.board
    st = r.station
    if st.cmd_stop(b.ticks_ms()) is not None:
        raise RuntimeError("stop refused")
    pwm_off_at = None
    while b.contactor_cmd:
        r.step()
        if pwm_off_at is None and b.duty >= 1000:
            pwm_off_at = b.now_ms - TICK_MS
        if pwm_off_at is not None and b.now_ms - pwm_off_at > 10000:
            raise RuntimeError("pwm off: the contactor did not open")
    return {"measured_ms": b.now_ms - TICK_MS - pwm_off_at,
            "config_ms": st.cfg["pwm_off_open_ms"]}


# -- allocation and timing of the safety tick -------------------------------------------

def _alloc_plan():
    """(label, change) pairs: every state and fault path the safety tick has."""
    def ev(plugged, s2):
        def f(b):
            b.model.plugged = plugged
            b.model.s2 = s2
            b.model.update()
        return f

    def model_fault(name, on):
        def f(b):
            setattr(b.model, name, on)
            b.model.update()
        return f

    def attr(name, value):
        def f(b):
            setattr(b, name, value)
        return f

    def temp(dc):
        def f(b):
            b.ramp_temperature(dc, 0)
        return f

    unplug = ev(False, S2_OPEN)
    charge = ev(True, S2_C)
    return (
        ("A idle", unplug),
        ("plug: B, self-test", ev(True, S2_OPEN)),
        ("C: close, charge", charge),
        ("C->B", ev(True, S2_OPEN)),
        ("B->C", charge),
        ("derate", temp(660)),
        ("quarter", temp(690)),
        ("over-temperature stop", temp(800)),
        ("cool down", temp(250)),
        ("unplug", unplug),
        ("D without ventilation", ev(True, S2_D)),
        ("unplug", unplug),
        ("plug, C", charge),
        ("diode short (F)", model_fault("diode_short", True)),
        ("diode ok", model_fault("diode_short", False)),
        ("unplug", unplug),
        ("plug, C", charge),
        ("CP short (E)", model_fault("cp_short_pe", True)),
        ("CP short gone", model_fault("cp_short_pe", False)),
        ("plug, C", charge),
        ("CP open", model_fault("cp_open", True)),
        ("CP back", model_fault("cp_open", False)),
        ("PE lost", model_fault("pe_loss", True)),
        ("PE back", model_fault("pe_loss", False)),
        ("unplug", unplug),
        ("residual-current trip", attr("rcd_fault", True)),
        ("plug with trip", charge),
        ("trip gone", attr("rcd_fault", False)),
        ("unplug", unplug),
        ("sensor broken", temp(-600)),
        ("sensor back", temp(250)),
        ("stuck-open contactor", attr("contactor_stuck_open", True)),
        ("plug, C, not closing", charge),
        ("unplug", unplug),
        ("contactor fixed", attr("contactor_stuck_open", False)),
        ("welded contacts", attr("contactor_welded", True)),
        ("plug, C", charge),
        ("C->B with welded contacts", ev(True, S2_OPEN)),
        ("unplug", unplug),
        ("contacts repaired", attr("contactor_welded", False)),
    )


def _probe(now):
    # Allocates one small list: the methods below must see it.
    return [now]


def probe(n):
    """The same two measurements on a call that allocates: proof they detect allocation."""
    locked_error = False
    micropython.heap_lock()
    try:
        _probe(0)
    except MemoryError:
        locked_error = True
    finally:
        micropython.heap_unlock()
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for i in range(n):
            _probe(i)
        allocated = gc.mem_alloc() - before
    finally:
        gc.enable()
    return locked_error, allocated / n


def alloc_and_timing(storage, ticks_per_phase):
    plan = _alloc_plan()
    n_total = len(plan) * ticks_per_phase
    # Pass 1: heap_lock. Every phase with a MemoryError is named.
    r = _Rig(storage)
    st = r.station
    b = r.board
    failed = []
    locked_ticks = 0
    states_seen = []
    faults_seen = []
    for label, change in plan:
        change(b)
        errors = 0
        for _ in range(ticks_per_phase):
            now = b.ticks_ms()
            micropython.heap_lock()
            try:
                st.safety_tick(now)
            except MemoryError:
                errors += 1
            finally:
                micropython.heap_unlock()
            locked_ticks += 1
            b.now_ms += TICK_MS
            st.events.clear()
            s = NAMES[st.charger.state]
            if s not in states_seen:
                states_seen.append(s)
            for f in st.faults.active_names():
                if f not in faults_seen:
                    faults_seen.append(f)
        if errors:
            failed.append(label)
    # Pass 2: the same ticks with the collector off; gc.mem_alloc() before and after each
    # phase (the phase changes themselves allocate and are left out), and ticks_us per tick.
    from array import array
    us = array("i", [0] * n_total)
    r = _Rig(storage)
    st = r.station
    b = r.board
    allocated = 0
    k = 0
    gc.collect()
    gc.disable()
    try:
        for label, change in plan:
            change(b)
            before = gc.mem_alloc()
            for _ in range(ticks_per_phase):
                now = b.ticks_ms()
                t0 = time.ticks_us()
                st.safety_tick(now)
                us[k] = time.ticks_diff(time.ticks_us(), t0)
                k += 1
                b.now_ms += TICK_MS
                st.events.clear()
            allocated += gc.mem_alloc() - before
    finally:
        gc.enable()
    srt = sorted(us)
    probe_error, probe_bytes = probe(100)
    return {
        "probe_locked_error": probe_error,
        "probe_bytes": probe_bytes,
        "heap_lock_ticks": locked_ticks,
        "heap_lock_failed_phases": failed,
        "states_seen": states_seen,
        "faults_seen": faults_seen,
        "measured_ticks": n_total,
        "allocated_bytes": allocated,
        "bytes_per_tick": allocated / n_total,
    }, {
        "ticks": n_total,
        "median_us": srt[n_total // 2],
        "p99_us": srt[(n_total * 99) // 100],
        "max_us": srt[-1],
    }


def main(argv):
    storage = argv[1]
    quick = len(argv) > 2 and argv[2] == "quick"
    phases = (0, 5) if quick else tuple(range(TICK_MS))
    out = {"tick_ms": TICK_MS, "phases_ms": list(phases)}
    out["reaction"] = reaction(storage, phases)
    out["pwm_off"] = pwm_off(storage)
    out["alloc"], out["timing"] = alloc_and_timing(storage, 250 if quick else 300)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
