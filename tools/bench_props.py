"""Safety properties of the charge controller under random EV behaviour, faults, backend
commands and resets, checked on every tick.

    python -m tools.bench_props [--cases N] [--seed S]     # `make bench` runs 100000

One case is a list of (action, ticks): the action changes the world (the EV, the contactor,
the residual-current monitor, temperature, the meter), sends a backend command, or resets
the station (a commanded reboot, the watchdog, a crash, a power cut); then the charger runs
that many 10 ms ticks. The charger is the real firmware (firmware/charger.py) in the test
rig of tools/charger_rig.py; after each tick the latches and the limit go to the safety
record on an in-memory flash as the station does (firmware/safestate.py), and a reset builds
a new charger and restores it from that record, as Station.__init__ does.

`run_case()` is shared with the hypothesis test (tests/system/test_charger_properties.py,
a few hundred cases in `make test`); this module's main() generates cases with a seeded
random generator (hypothesis would spend more time generating than running 10^5 cases) and
reports `property_cases` and `property_violations` (the first few violations as examples).
"""
import argparse
import json
import random
import sys
import time

from firmware import faults as F
from firmware.charger import Charger
from firmware.compat import ticks_add, ticks_diff
from firmware.safestate import SafeState
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs
from tools.charger_rig import Rig

# The station's reboot command (firmware/station.py): the reply first, then the reset once
# the charger is ready (the contactor open or the EV's time to stop is over, no F hold).
REBOOT_GRACE_MS = 1000
REBOOT_FORCE_MS = 7000

WORLD = (
    "ev_A", "ev_B", "ev_C", "ev_D", "ev_E", "diode_off", "diode_on", "leak", "no_leak",
    "weld", "unweld", "stuck_open", "unstick", "hot", "very_hot", "cool", "overdraw",
    "normal_draw", "pp_bad", "pp_ok", "monitor_dead", "monitor_ok", "lock_broken",
    "lock_ok",
)
COMMANDS = (
    "authorize", "deauthorize", "cmd_stop", "cmd_start", "cmd_limit_10", "cmd_limit_8",
    "cmd_limit_0", "cmd_limit_3", "cmd_no_limit", "unavailable", "available",
    "cmd_clear", "tech_clear", "cmd_selftest", "cmd_reboot",
)
# A watchdog reset, a crash and a power cut between two loop iterations are the same to the
# charger: the record on flash is all that is left (tests/unit/test_reset_latches.py plays each
# on the whole station, and a power cut inside every flash write). "cmd_reboot" is the
# commanded one, which waits for the charger.
RESETS = ("reset",)
ACTIONS = WORLD + COMMANDS + RESETS


class Violation(AssertionError):
    pass


def _check(ok, what):
    if not ok:
        raise Violation(what)


class Case:
    """One run: the rig, the safety record and the checker's own memory."""

    def __init__(self, selftest, lock):
        self.r = Rig(rcd_selftest=selftest, lock_enabled=lock, tick_ms=10)
        self.r.temp_dc = 250
        self.fs = PowerCutFs()
        self.safe = SafeState(Store("/data", self.fs))
        self.cfg = self.r.cfg
        self.was_closed = False
        self.pwm_off_since = None
        self.f_since = None
        self.prev_blocking = 0
        self.ever_welded = False        # cleared only by a technician's clear on site
        self.must_open_ticks = 0
        self.must_open_all = 0
        self.open_cause = None
        self.reboot_at = None
        self.reboot_deadline = None
        self.resets = 0
        self.prev_latched = 0           # latched faults active after the last tick
        self.since_ev_a = 0             # ticks since the EV was last away (state A)

    # -- actions ---------------------------------------------------------------------------
    def apply(self, action):
        r = self.r
        ch = r.ch
        if action.startswith("ev_"):
            r.ev = action[3:]
        elif action in ("diode_off", "diode_on"):
            r.diode = action == "diode_on"
        elif action in ("leak", "no_leak"):
            r.leak = action == "leak"
        elif action == "weld":
            r.welded = True
        elif action == "unweld":
            r.welded = False            # the technician replaced the contactor
        elif action in ("stuck_open", "unstick"):
            r.stuck_open = action == "stuck_open"
        elif action == "hot":
            r.temp_dc = 660
        elif action == "very_hot":
            r.temp_dc = 720
        elif action == "cool":
            r.temp_dc = 250
        elif action in ("overdraw", "normal_draw"):
            r.draw_ma = 45000 if action == "overdraw" else None
        elif action in ("pp_bad", "pp_ok"):
            r.pp_ohms = 100000 if action == "pp_bad" else 220
        elif action in ("monitor_dead", "monitor_ok"):
            r.monitor_ok = action == "monitor_ok"
        elif action in ("lock_broken", "lock_ok"):
            r.lock_works = action == "lock_ok"
        elif action in ("authorize", "deauthorize"):
            ch.authorize(action == "authorize")
        elif action == "cmd_stop":
            ch.pause()
        elif action == "cmd_start":
            if self.reboot_at is None:  # refused while a reboot is scheduled (station)
                if ch.paused:
                    ch.resume()
                else:
                    ch.authorize(True)
        elif action.startswith("cmd_limit_"):
            ch.set_backend_limit(int(action[10:]) * 1000)
        elif action == "cmd_no_limit":
            ch.clear_backend_limit()
        elif action in ("unavailable", "available"):
            ch.set_available(action == "available")
        elif action == "cmd_clear":
            self.clear_all(True)
        elif action == "tech_clear":
            self.clear_all(False)
        elif action == "cmd_selftest":
            if not ch.contactor:
                ch.request_selftest()
        elif action == "cmd_reboot":
            if self.reboot_at is None:
                ch.pause()
                now = r.now
                self.reboot_at = ticks_add(now, REBOOT_GRACE_MS)
                self.reboot_deadline = ticks_add(now, REBOOT_FORCE_MS)
        elif action == "reset":
            self.reset("unplanned")
        else:
            raise ValueError(action)

    def clear_all(self, remote):
        fs = self.r.ch.faults
        for f in F.all_faults():
            if not fs.is_active(f.code):
                continue
            present = fs.is_present(f.code)
            err = self.r.ch.clear_fault(f.code, remote)
            if err is None:
                # The table decides: never remotely what is "on site only", never while
                # the cause is present.
                _check(not (remote and not f.remote_clear), "%s cleared remotely" % f.name)
                _check(not present, "%s cleared with its cause present" % f.name)
                if f.code == F.CONTACTOR_WELDED and not remote:
                    self.ever_welded = False
            else:
                _check(fs.is_active(f.code), "%s refused but gone" % f.name)
        self.prev_latched = fs.latched()

    def reset(self, kind):
        """A reset between two loop iterations: the record on flash is what the station
        wrote after the last tick; a new charger is built and restored from it."""
        r = self.r
        old = r.ch
        latched = old.faults.latched()
        limit = old.backend_limit_ma()
        if kind == "reboot":
            # A commanded reboot waits for the F hold (Table A.5), reboot included.
            _check(self.f_since is None
                   or ticks_diff(r.now, self.f_since) >= self.cfg["fault_hold_ms"],
                   "reboot cut the F hold short")
        self.fs = self.fs.restart()
        safe = SafeState(Store("/data", self.fs))
        safe.load()
        ch = Charger(self.cfg)
        left = safe.restore(ch, r.now)
        _check(safe.damaged is None, "safety record damaged: %s" % safe.damaged)
        _check(ch.faults.active & latched == latched,
               "latched %s lost in a %s reset" % (F.names(latched & ~ch.faults.active), kind))
        _check(ch.backend_limit_ma() == limit and left is None,
               "limit %d became %d in a %s reset" % (limit, ch.backend_limit_ma(), kind))
        r.ch = ch
        self.safe = safe
        self.reboot_at = None
        # The new charger shows F for a restored fault that stops charging; an F hold cut
        # by a watchdog, crash or power cut cannot be helped.
        self.prev_blocking = 0
        self.f_since = None
        self.pwm_off_since = None
        self.was_closed = False
        self.must_open_ticks = 0
        self.must_open_all = 0
        self.open_cause = None
        self.resets += 1

    # -- ticks -----------------------------------------------------------------------------
    def tick(self):
        r = self.r
        r.step()
        ch = r.ch
        if self.safe.due(ch.faults, ch):
            self.safe.save(ch.faults, ch)
        now = r.last_tick_ms()
        self.check(now)
        if self.reboot_at is not None and ticks_diff(now, self.reboot_at) >= 0 \
                and ch.ready_for_reset(ticks_diff(now, self.reboot_deadline) >= 0):
            self.reset("reboot")

    def check(self, now):
        r = self.r
        ch = r.ch
        cfg = self.cfg
        duty = ch.duty_pm
        blocking = ch.faults.blocking()
        # The EV never sees a duty the standard forbids.
        _check(duty in (0, 1000) or 100 <= duty <= 960, "duty %d" % duty)
        # The EV leaving C, a missing diode under PWM, or D without ventilation: open in the
        # tick that confirms it (pilot_confirm_n equal readings), and within 100 ms whatever
        # the EV does meanwhile (Annex A).
        if (r.ev not in ("C", "D") or (r.ev == "D" and not cfg["ventilation_supported"])
                or (not r.diode and 0 < duty < 1000)):
            cause = r.ev if r.diode else r.ev + "/no diode"
            if cause == self.open_cause:
                self.must_open_ticks += 1
            else:
                self.must_open_ticks = 1
                self.open_cause = cause
            self.must_open_all += 1
        else:
            self.must_open_ticks = 0
            self.must_open_all = 0
            self.open_cause = None
        if self.must_open_ticks >= cfg["pilot_confirm_n"]:
            _check(not ch.contactor, "closed with EV %s diode %s" % (r.ev, r.diode))
        _check(self.must_open_all * r.tick_ms < 100 or not ch.contactor,
               "still closed 100 ms after the EV left C")
        # A residual current opens in the tick that sees it.
        if r.leak:
            _check(not ch.contactor, "closed with a residual current")
        if ch.contactor:
            _check(not blocking, "closed with %s" % F.names(blocking))
            if duty == 1000:
                if self.pwm_off_since is None:
                    self.pwm_off_since = now
                _check(ticks_diff(now, self.pwm_off_since) < cfg["pwm_off_open_ms"],
                       "closed with PWM off beyond pwm_off_open_ms")
            else:
                self.pwm_off_since = None
                _check(ch.offered_ma >= 6000, "closed offering %d mA" % ch.offered_ma)
        else:
            self.pwm_off_since = None
        # A latched fault goes only as the table says: "until unplug" with no EV at the
        # socket (state A; the charger sees a new level pilot_confirm_n readings late), a
        # clear request (checked in clear_all); "until cleared" never by itself; a reset
        # keeps both (checked in reset()).
        self.since_ev_a = 0 if r.ev == "A" else self.since_ev_a + 1
        latched = ch.faults.latched()
        gone = self.prev_latched & ~latched
        if gone:
            for f in F.all_faults():
                if gone >> f.code & 1:
                    _check(f.clearing == F.UNPLUG
                           and self.since_ev_a <= cfg["pilot_confirm_n"],
                           "%s cleared by itself" % f.name)
        self.prev_latched = latched
        # The PWM never offers more than the backend limit in force (a reset included).
        limit = ch.backend_limit_ma()
        if limit >= 0:
            _check(ch.offered_ma <= limit, "offering %d mA over a limit of %d"
                   % (ch.offered_ma, limit))
        # Closed only when the standard allows it.
        if ch.contactor and not self.was_closed:
            _check(0 < duty < 1000, "closed without PWM")
            _check(r.ev == "C" or (r.ev == "D" and cfg["ventilation_supported"]),
                   "closed with EV %s" % r.ev)
            _check(r.diode and not r.leak, "closed without diode or with leak")
            _check(ch.authorized and ch.available and not ch.paused,
                   "closed unauthorized, unavailable or paused")
            # A welded contactor is never closed again, across resets, until it is cleared
            # on site.
            _check(not self.ever_welded, "closed again after a weld")
        if ch.faults.is_active(F.CONTACTOR_WELDED):
            self.ever_welded = True
        # A new fault that stops charging: -12 V for at least fault_hold_ms.
        if blocking & ~self.prev_blocking:
            self.f_since = now
        if self.f_since is not None:
            if ticks_diff(now, self.f_since) < cfg["fault_hold_ms"]:
                _check(duty == 0, "F hold ended early")
            else:
                self.f_since = None
        self.prev_blocking = blocking
        self.was_closed = ch.contactor


def run_case(steps, selftest=False, lock=False):
    """Play `steps` [(action, ticks), ...]; returns None, or the first violation as text
    (with the step it happened in)."""
    case = Case(selftest, lock)
    for i, (action, n_ticks) in enumerate(steps):
        try:
            case.apply(action)
            for _ in range(n_ticks):
                case.tick()
        except Violation as e:
            return "step %d (%s): %s" % (i, action, e.args[0])
    return None


def random_case(rng):
    n = rng.randint(1, 10)
    steps = []
    for _ in range(n):
        if rng.random() < 0.08:
            action = rng.choice(RESETS)
        elif rng.random() < 0.35:
            action = rng.choice(COMMANDS)
        else:
            action = rng.choice(WORLD)
        steps.append((action, rng.choice((1, 2, 5, 10, 20, 50, 100, 300))))
    return steps, rng.random() < 0.5, rng.random() < 0.3


def bench(cases, seed=1, examples=3):
    """Run `cases` random cases; the figures for build/bench.json."""
    rng = random.Random(seed)
    violations = 0
    found = []
    ticks = 0
    resets = 0
    t0 = time.monotonic()
    for _ in range(cases):
        steps, selftest, lock = random_case(rng)
        ticks += sum(n for _a, n in steps)
        resets += sum(1 for a, _n in steps if a in RESETS or a == "cmd_reboot")
        v = run_case(steps, selftest, lock)
        if v is not None:
            violations += 1
            if len(found) < examples:
                found.append({"violation": v, "steps": steps, "selftest": selftest,
                              "lock": lock})
    metrics = {"property_cases": cases, "property_violations": violations}
    detail = {"seed": seed, "ticks": ticks, "resets": resets, "examples": found,
              "wall_s": round(time.monotonic() - t0, 1)}
    return metrics, detail


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.bench_props", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    metrics, detail = bench(args.cases, args.seed)
    json.dump(dict(metrics, **detail), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 1 if metrics["property_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
