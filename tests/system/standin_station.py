"""A stand-in for firmware.station (Station(board, config=None), run(), step()) so boot.py
and main.py can be exercised before, and independently of, the real station. Behaviour is
set by the harness through module globals."""
import machine
from drivers import bootinfo
from firmware import board as B

steps_before_stop = 5       # run() ends the harness after this many steps
crash_at_step = None        # raise in this step (after closing the contactor)
crash_message = "boom"
return_from_run = False     # run() returns, which main.py must treat as a crash
interrupt_at_step = None    # Ctrl-C at the REPL while running
hang_at_step = None         # the loop gets stuck here (sleeps on, never feeds the watchdog)

steps = 0
crash_at_us = None
seen_last_crash = None
seen_reset_cause = None
constructed_with = None


class StopRun(BaseException):
    """Ends the harness's run: not an Exception, so main.py's crash path does not see it."""


class Station:
    def __init__(self, board, config=None):
        global constructed_with, seen_last_crash, seen_reset_cause
        constructed_with = (type(board).__name__, config)
        self.board = board
        seen_last_crash = bootinfo.last_crash()
        seen_reset_cause = bootinfo.reset_cause

    def step(self):
        global steps, crash_at_us
        b = self.board
        b.sample_pilot()
        b.read_pp_ohms()
        b.rcd_tripped()
        b.temperature_dc()
        b.set_led(B.LED_IDLE)
        b.feed_watchdog()
        steps += 1
        if interrupt_at_step is not None and steps == interrupt_at_step:
            b.set_contactor(True)
            raise KeyboardInterrupt()
        if hang_at_step is not None and steps == hang_at_step:
            b.set_contactor(True)
            crash_at_us = machine.sim.now_us
            while True:
                b.sleep_ms(100)
        if crash_at_step is not None and steps == crash_at_step:
            b.set_pilot(500)
            b.set_contactor(True)
            crash_at_us = machine.sim.now_us
            raise RuntimeError(crash_message)
        b.sleep_ms(20)

    def run(self):
        while steps < steps_before_stop:
            self.step()
        if return_from_run:
            return
        raise StopRun()
