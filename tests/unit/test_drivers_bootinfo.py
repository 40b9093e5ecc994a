# drivers/bootinfo.py: service mode, reset cause, the bounded crash file and the crash path.
# Runs on CPython and the unix port, in a scratch directory standing in for the device's /.
import os
import unittest

import machine
from drivers import bootinfo, clock

sim = machine.sim
_n = [0]


def scratch_dir():
    _n[0] += 1
    path = "/tmp/bootinfo-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, _n[0])
    try:
        os.mkdir(path)
    except OSError:
        for name in os.listdir(path):
            os.remove(path + "/" + name)
    return path


class _Board:
    """Records what the crash path asks of a board; safe_state() may be made to fail."""

    def __init__(self, safe_state_fails=False):
        self.calls = []
        self.fail = safe_state_fails

    def safe_state(self):
        if self.fail:
            raise OSError(5)
        self.calls.append("safe_state")

    def set_contactor(self, closed):
        self.calls.append(("set_contactor", closed))

    def feed_watchdog(self):
        self.calls.append(("feed", sim.now_us // 1000))


class BootInfo(unittest.TestCase):
    def setUp(self):
        sim.reset()
        self._saved_clock = clock.source
        clock.source = sim.clock
        self.root = scratch_dir()

    def tearDown(self):
        clock.source = self._saved_clock
        bootinfo.start(None, fs_root="/")     # leave no scratch root behind for others
        for name in os.listdir(self.root):
            os.remove(self.root + "/" + name)
        os.rmdir(self.root)

    def test_reset_cause_and_no_service_mode(self):
        sim.reset_cause = machine.WDT_RESET
        self.assertFalse(bootinfo.start(None, fs_root=self.root))
        self.assertEqual(bootinfo.reset_cause, "watchdog")
        self.assertEqual(bootinfo.root, self.root + "/")
        self.assertIsNone(bootinfo.last_crash())

    def test_service_flag_file(self):
        with open(self.root + "/maint", "w") as f:
            f.write("")
        raw = {"service": {"flag_file": "maint"}}
        self.assertTrue(bootinfo.start(raw, fs_root=self.root))
        self.assertTrue(bootinfo.service_mode)
        self.assertIn("flag file", bootinfo.service_reason)

    def test_service_pin(self):
        raw = {"service": {"pin": 18, "active_high": False, "pull": "up"}}
        self.assertFalse(bootinfo.start(raw, fs_root=self.root))
        sim.set_input(18, 0)
        self.assertTrue(bootinfo.start(raw, fs_root=self.root))
        self.assertEqual(bootinfo.service_reason, "service pin held")

    def test_bad_service_entry_does_not_stop_the_boot(self):
        self.assertFalse(bootinfo.start({"service": {"pin": 99}}, fs_root=self.root))

    def test_crash_file_keeps_the_end_and_is_bounded(self):
        bootinfo.start(None, fs_root=self.root)
        text = "frame\n" * 1000 + "ValueError: the reason\n"
        bootinfo.record_crash(text)
        saved = bootinfo.last_crash()
        self.assertTrue(len(saved) <= bootinfo.CRASH_MAX_BYTES)
        self.assertTrue(saved.startswith("...\n"))
        self.assertTrue(saved.endswith("ValueError: the reason\n"))
        bootinfo.clear_crash()
        self.assertIsNone(bootinfo.last_crash())
        bootinfo.clear_crash()   # twice is fine

    def test_a_crash_report_that_does_not_fit_the_heap_is_still_a_crash(self):
        # Out of heap at the next boot, the report cannot be read: the crash must still be
        # reported (INTERNAL_ERROR), not taken for a clean start.
        bootinfo.start(None, fs_root=self.root)
        bootinfo.record_crash("MemoryError: memory allocation failed\n")

        def no_heap(*_args):
            raise MemoryError()
        bootinfo.open = no_heap
        try:
            self.assertEqual(bootinfo.last_crash(), bootinfo.CRASH_UNREADABLE)
        finally:
            del bootinfo.open
        bootinfo.clear_crash()
        self.assertIsNone(bootinfo.last_crash())

    def test_crash_path_opens_waits_feeding_and_resets(self):
        coil = machine.Pin(26, machine.Pin.OUT, value=0)
        bootinfo.start(None, contactor=coil, contactor_off=0, fs_root=self.root)
        coil.value(1)
        board = _Board(safe_state_fails=True)
        try:
            raise RuntimeError("station failed")
        except RuntimeError as e:
            exc = e
        try:
            bootinfo.crash(exc, board)
            self.fail("crash() returned")
        except SystemExit:
            pass
        self.assertEqual(sim.level(26), 0)
        self.assertEqual(board.calls[0], ("set_contactor", False))   # fallback after failure
        feeds = [c[1] for c in board.calls if c[0] == "feed"]
        self.assertEqual(len(feeds), bootinfo.CRASH_RESET_DELAY_MS // 100)
        self.assertEqual(sim.reset_count, 1)
        self.assertEqual(sim.events("reset")[0][0], bootinfo.CRASH_RESET_DELAY_MS * 1000)
        saved = bootinfo.last_crash()
        self.assertTrue(saved.startswith("reset_cause=power_on\n"))
        self.assertIn("RuntimeError: station failed", saved)

    def test_a_crash_file_that_is_not_utf8_is_read_not_raised(self):
        with open(self.root + "/crash.txt", "wb") as f:
            f.write(b"reset_cause=hard\nValueError: \xff\xfe bad\n")
        bootinfo.start(None, fs_root=self.root)     # prints its last line: must not raise
        text = bootinfo.last_crash()
        self.assertTrue(text.startswith("reset_cause=hard\n"))
        self.assertIn("ValueError: ?? bad", text)

    def crash_once(self, board=None):
        try:
            raise RuntimeError("again")
        except RuntimeError as e:
            exc = e
        try:
            bootinfo.crash(exc, board)
            self.fail("crash() returned")
        except SystemExit:
            pass

    def test_crashes_in_a_row_are_counted_in_rtc_memory_up_to_the_limit(self):
        for n in range(bootinfo.CRASH_LIMIT):
            sim.power_cycle(machine.HARD_RESET)         # what machine.reset() leads to
            bootinfo.start(None, fs_root=self.root)
            self.assertEqual(bootinfo.crashes, n)
            self.assertFalse(bootinfo.crash_loop)
            self.crash_once()
        sim.power_cycle(machine.HARD_RESET)
        bootinfo.start(None, fs_root=self.root)
        self.assertEqual(bootinfo.crashes, bootinfo.CRASH_LIMIT)
        self.assertTrue(bootinfo.crash_loop)
        # A power cycle empties RTC memory: the application gets another try.
        sim.power_cycle(machine.PWRON_RESET)
        bootinfo.start(None, fs_root=self.root)
        self.assertEqual(bootinfo.crashes, 0)
        self.assertFalse(bootinfo.crash_loop)

    def test_watchdog_resets_count_as_crashes(self):
        for n in range(1, bootinfo.CRASH_LIMIT + 1):
            sim.power_cycle(machine.WDT_RESET)
            bootinfo.start(None, fs_root=self.root)
            self.assertEqual(bootinfo.crashes, n)
        self.assertTrue(bootinfo.crash_loop)
        bootinfo.clear_crashes()                        # the technician's "try again"
        sim.power_cycle(machine.HARD_RESET)
        bootinfo.start(None, fs_root=self.root)
        self.assertEqual(bootinfo.crashes, 0)

    def test_garbage_in_rtc_memory_is_no_count(self):
        for junk in (b"", b"cp-crashes:", b"cp-crashes:-3", b"cp-crashes:x", b"\xff" * 40,
                     b"cp-crashes:99999"):
            sim.rtc_memory = junk
            bootinfo.start(None, fs_root=self.root)
            self.assertEqual(bootinfo.crashes, 0)

    def test_a_clean_run_empties_the_count(self):
        sim.rtc_memory = b"cp-crashes:3"
        bootinfo.start(None, fs_root=self.root)
        self.assertEqual(bootinfo.crashes, 3)
        timer = bootinfo.clean_run_timer({"lock": {"timer_id": bootinfo.CLEAN_RUN_TIMER}})
        self.assertIsNotNone(timer)
        # Not the timer the board's lock drives its pulses with.
        self.assertEqual(sim.events("timer")[-1][2], bootinfo.CLEAN_RUN_TIMER - 1)
        sim.advance_ms(bootinfo.CLEAN_RUN_MS - 1)
        self.assertEqual(sim.rtc_memory, b"cp-crashes:3")
        sim.advance_ms(1)
        self.assertEqual(sim.rtc_memory, b"cp-crashes:0")
        self.assertEqual(bootinfo.crashes, 0)

    def test_a_crash_before_the_clean_run_keeps_counting(self):
        sim.rtc_memory = b"cp-crashes:2"
        bootinfo.start(None, fs_root=self.root)
        bootinfo.clean_run_timer(None)
        sim.advance_ms(bootinfo.CLEAN_RUN_MS // 2)
        self.crash_once()
        sim.advance_ms(bootinfo.CLEAN_RUN_MS)           # the timer was stopped by the crash
        self.assertEqual(sim.rtc_memory, b"cp-crashes:3")

    def test_no_timer_without_crashes(self):
        bootinfo.start(None, fs_root=self.root)
        self.assertIsNone(bootinfo.clean_run_timer(None))
        self.assertEqual(sim.events("timer"), [])
