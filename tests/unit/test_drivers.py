# ESP32 drivers and Esp32Board against the fake machine, in simulated time.
# Runs on CPython (pytest) and on the unix port (tests/mprun.py).
import json
import unittest

import machine
from drivers.boardfile import validate
from drivers.esp32_board import Esp32Board, unix_seconds
from drivers.temperature import SENSOR_FAULT_DC, ntc_ohms
from firmware import board as B

sim = machine.sim


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


def reference():
    with open(_root() + "/boards/reference.json") as f:
        return json.load(f)


def make_board(raw=None):
    sim.reset()
    return Esp32Board(validate(raw or reference()), clock=sim.clock, fs_root="/")


def front_end(cp_mv):
    """Reference sense divider: ADC mV = 1300 + CP mV / 10 (0 V -> 1.3 V, 12 V -> 2.5 V)."""
    return 1300 + cp_mv // 10


def pilot_wave(high_mv, low_mv, pin=25, inverted=False):
    """The CP as the EV loads it: `high_mv` while the PWM is high, `low_mv` while low."""
    hi = front_end(high_mv)
    lo = front_end(low_mv)

    def adc(t):
        return hi if sim.pwm_output_high(pin, t) != inverted else lo
    return adc


class PilotOutput(unittest.TestCase):
    def test_duty_mapping_and_steady_levels(self):
        b = make_board()
        pwm = sim.pwm(25)
        self.assertEqual(pwm.freq(), 1000)
        self.assertEqual(pwm.duty_u16(), 65535)    # boots at steady +12 V (state A)
        b.set_pilot(267)                           # 16 A
        self.assertEqual(pwm.duty_u16(), 267 * 65535 // 1000)
        b.set_pilot(B.PILOT_STEADY_LOW)            # state F
        self.assertEqual(pwm.duty_u16(), 0)
        b.set_pilot(B.PILOT_STEADY_HIGH)
        self.assertEqual(pwm.duty_u16(), 65535)

    def test_unchanged_duty_is_not_rewritten(self):
        b = make_board()
        b.set_pilot(500)
        n = len(sim.events("pwm_duty", 25))
        for _ in range(10):
            b.set_pilot(500)
        self.assertEqual(len(sim.events("pwm_duty", 25)), n)

    def test_out_of_range_changes_nothing(self):
        b = make_board()
        b.set_pilot(500)
        self.assertRaises(ValueError, b.set_pilot, 1001)
        self.assertRaises(ValueError, b.set_pilot, -1)
        self.assertEqual(sim.pwm(25).duty_u16(), 500 * 65535 // 1000)

    def test_inverting_output_stage(self):
        raw = reference()
        raw["pilot"]["pwm_inverted"] = True
        b = make_board(raw)
        self.assertEqual(sim.pwm(25).duty_u16(), 0)      # CP +12 V = pin low
        b.set_pilot(100)
        self.assertEqual(sim.pwm(25).duty_u16(), 65535 - 100 * 65535 // 1000)
        b.set_pilot(0)
        self.assertEqual(sim.pwm(25).duty_u16(), 65535)


class PilotSampling(unittest.TestCase):
    def test_state_b2_at_every_valid_duty(self):
        # 6 A (10 %) to 80 A (96 %): both plateaus are found; -12 V is below the ADC floor
        # and comes back as the nominal level.
        for duty in (100, 267, 533, 850, 960):
            b = make_board()
            sim.set_adc(36, pilot_wave(9000, -12000))
            b.set_pilot(duty)
            b.sample_pilot()
            self.assertEqual((duty, b.cp_high_mv, b.cp_low_mv), (duty, 9000, -12000))

    def test_state_c_and_d_high_levels(self):
        for high in (6000, 3000):
            b = make_board()
            sim.set_adc(36, pilot_wave(high, -12000))
            b.set_pilot(533)
            b.sample_pilot()
            self.assertEqual(b.cp_high_mv, high)

    def test_low_level_inside_the_linear_range_is_measured(self):
        b = make_board()
        sim.set_adc(36, pilot_wave(9000, -11000))   # 200 mV at the ADC: above the floor
        b.set_pilot(500)
        b.sample_pilot()
        self.assertEqual(b.cp_low_mv, -11000)

    def test_steady_outputs_hold_one_level(self):
        b = make_board()
        sim.set_adc(36, front_end(12000))
        b.set_pilot(1000)
        b.sample_pilot()
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (12000, 12000))
        b.set_pilot(0)
        sim.set_adc(36, front_end(-12000))
        b.sample_pilot()
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (-12000, -12000))

    def test_cp_shorted_to_pe_reads_zero_both_ways(self):
        b = make_board()
        sim.set_adc(36, front_end(0))
        b.set_pilot(500)
        b.sample_pilot()
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (0, 0))

    def test_burst_spans_two_periods_within_its_sample_cap(self):
        b = make_board()
        sim.set_adc(36, pilot_wave(9000, -12000))
        b.set_pilot(500)
        t0 = sim.now_us
        b.sample_pilot()
        self.assertTrue(sim.now_us - t0 >= 2000)
        per = sim.adc_read_us
        self.assertEqual(b.pilot_sampler.samples, (2100 + per - 1) // per)
        raw = reference()
        raw["pilot"]["burst_max_samples"] = 20
        b = make_board(raw)
        sim.set_adc(36, pilot_wave(9000, -12000))
        b.set_pilot(500)
        b.sample_pilot()
        self.assertEqual(b.pilot_sampler.samples, 20)

    def test_a_single_spike_is_ignored(self):
        b = make_board()
        wave = pilot_wave(9000, -12000)
        spike_at = sim.now_us + 300

        def spiky(t):
            if spike_at <= t < spike_at + sim.adc_read_us:
                return 3000
            return wave(t)
        sim.set_adc(36, spiky)
        b.set_pilot(500)
        b.sample_pilot()
        self.assertEqual(b.cp_high_mv, 9000)

    def test_inverting_sense_stage(self):
        raw = reference()
        raw["pilot"]["adc_mv_at_0v"] = 1800
        raw["pilot"]["adc_mv_at_12v"] = 600
        b = make_board(raw)

        def adc(t):
            return 900 if sim.pwm_output_high(25, t) else 3000   # +9 V / -12 V
        sim.set_adc(36, adc)
        b.set_pilot(500)
        b.sample_pilot()
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (9000, -12000))

    def test_inverting_output_stage_is_sampled_right(self):
        raw = reference()
        raw["pilot"]["pwm_inverted"] = True
        b = make_board(raw)
        sim.set_adc(36, pilot_wave(6000, -12000, inverted=True))
        b.set_pilot(300)
        b.sample_pilot()
        self.assertEqual((b.cp_high_mv, b.cp_low_mv), (6000, -12000))


class Proximity(unittest.TestCase):
    def pp_mv(self, ohms):
        return 3300 * ohms // (ohms + 1000)

    def test_type2_cable_codings(self):
        b = make_board()
        for rc in (100, 220, 680, 1500):
            sim.set_adc(39, self.pp_mv(rc))
            ohms = b.read_pp_ohms()
            self.assertTrue(abs(ohms - rc) <= rc // 50 + 2, (rc, ohms))

    def test_no_cable_is_open(self):
        b = make_board()
        sim.set_adc(39, 3300)
        self.assertEqual(b.read_pp_ohms(), B.PP_OPEN_OHMS)
        sim.set_adc(39, 3050)    # saturated ADC: no coding resistor
        self.assertEqual(b.read_pp_ohms(), B.PP_OPEN_OHMS)

    def test_tethered_cable(self):
        raw = reference()
        raw["pp"] = {"fixed_ohms": 220}
        b = make_board(raw)
        self.assertEqual(b.read_pp_ohms(), 220)


class ContactorRcd(unittest.TestCase):
    def test_contactor_and_mirror(self):
        b = make_board()
        self.assertEqual(sim.level(26), 0)
        sim.set_input(35, 1)                     # mirror open (closed pulls low)
        self.assertFalse(b.contactor_mirror_closed())
        b.set_contactor(True)
        self.assertEqual(sim.level(26), 1)
        sim.set_input(35, 0)
        self.assertTrue(b.contactor_mirror_closed())
        b.set_contactor(False)
        self.assertEqual(sim.level(26), 0)
        # A welded contact: the coil is off but the mirror still says closed.
        self.assertTrue(b.contactor_mirror_closed())

    def test_active_low_coil_and_no_mirror(self):
        raw = reference()
        raw["contactor"] = {"pin": 26, "active_high": False}
        b = make_board(raw)
        self.assertEqual(sim.level(26), 1)
        self.assertFalse(b.has_mirror)
        b.set_contactor(True)
        self.assertEqual(sim.level(26), 0)
        self.assertTrue(b.contactor_mirror_closed())   # echoes the command
        b.set_contactor(False)
        self.assertFalse(b.contactor_mirror_closed())

    def test_rcd_fault_and_test_output(self):
        b = make_board()
        self.assertFalse(b.rcd_tripped())            # pulled up, active low
        sim.set_input(27, 0)
        self.assertTrue(b.rcd_tripped())
        self.assertEqual(sim.level(14), 0)
        b.set_rcd_test(True)
        self.assertEqual(sim.level(14), 1)
        b.set_rcd_test(False)
        self.assertEqual(sim.level(14), 0)

    def test_board_without_rcd(self):
        raw = reference()
        del raw["rcd"]
        b = make_board(raw)
        self.assertFalse(b.has_rcd)
        self.assertFalse(b.rcd_tripped())
        b.set_rcd_test(True)   # nothing to drive: the core's self-test will see no trip


class SocketLock(unittest.TestCase):
    def test_lock_pulse_then_confirmed(self):
        b = make_board()
        sim.set_input(13, 1)                         # feedback: unlocked
        b.set_lock(True)
        self.assertEqual(sim.level(32), 1)
        self.assertFalse(b.lock_confirmed())
        sim.advance_ms(200)
        sim.set_input(13, 0)                         # the pin reached the locked position
        self.assertFalse(b.lock_confirmed())         # still pulsing
        sim.advance_ms(200)
        self.assertEqual(sim.level(32), 0)
        self.assertTrue(b.lock_confirmed())
        on = [t for t, v in sim.history(32) if v == 1][0]
        off = [t for t, v in sim.history(32) if v == 0][-1]
        self.assertEqual(off - on, 400000)

    def test_retries_then_failure(self):
        b = make_board()
        sim.set_input(13, 1)                         # never reaches locked
        b.set_lock(True)
        sim.advance_ms(5000)
        pulses = [v for _t, v in sim.history(32) if v == 1]
        self.assertEqual(len(pulses), 3)             # first try + 2 retries
        self.assertTrue(b.lock.failed)
        self.assertEqual(sim.level(32), 0)
        self.assertFalse(b.lock_confirmed())
        # The safety tick repeats the command every iteration: no new attempts from that.
        for _ in range(50):
            b.set_lock(True)
            sim.advance_ms(10)
        self.assertEqual(len([v for _t, v in sim.history(32) if v == 1]), 3)
        # A new command is a new attempt.
        b.set_lock(False)
        sim.advance_ms(400)
        b.set_lock(True)
        self.assertEqual(sim.level(32), 1)
        self.assertFalse(b.lock.failed)

    def test_unlock_drives_the_other_pin(self):
        b = make_board()
        sim.set_input(13, 0)
        b.set_lock(False)
        self.assertEqual((sim.level(32), sim.level(33)), (0, 1))
        sim.set_input(13, 1)
        sim.advance_ms(400)
        self.assertEqual(sim.level(33), 0)
        self.assertFalse(b.lock.failed)

    def test_board_without_lock(self):
        raw = reference()
        del raw["lock"]
        b = make_board(raw)
        b.set_lock(True)
        self.assertTrue(b.lock_confirmed())


class Temperature(unittest.TestCase):
    def ntc_mv(self, t_c):
        r = ntc_ohms(t_c, 10000, 3950)
        return int(3300 * r / (r + 10000) + 0.5)

    def test_beta_model_readings(self):
        b = make_board()
        for t_c in (-20, 0, 25, 40, 65, 71, 100):
            sim.set_adc(34, self.ntc_mv(t_c))
            dc = b.temperature_dc()
            self.assertTrue(abs(dc - t_c * 10) <= 5, (t_c, dc))

    def test_broken_sensor_reads_as_too_hot(self):
        b = make_board()
        sim.set_adc(34, 3290)     # open NTC: the ADC saturates near 3.1 V
        self.assertEqual(b.temperature_dc(), SENSOR_FAULT_DC)
        sim.set_adc(34, 0)        # shorted NTC
        self.assertEqual(b.temperature_dc(), SENSOR_FAULT_DC)

    def test_no_sensor(self):
        raw = reference()
        del raw["temperature"]
        self.assertIsNone(make_board(raw).temperature_dc())


class StatusLed(unittest.TestCase):
    def rgb(self):
        return (sim.level(21), sim.level(22), sim.level(23))

    def test_colours(self):
        b = make_board()
        b.set_led(B.LED_IDLE)
        self.assertEqual(self.rgb(), (0, 1, 0))
        b.set_led(B.LED_PAUSED)
        self.assertEqual(self.rgb(), (1, 1, 0))
        b.set_led(B.LED_OFF)
        self.assertEqual(self.rgb(), (0, 0, 0))

    def test_blinking_follows_the_clock(self):
        b = make_board()
        seen = []
        for _ in range(6):
            b.set_led(B.LED_FAULT)
            seen.append(sim.level(21))
            sim.advance_ms(250)
        self.assertEqual(seen, [1, 0, 1, 0, 1, 0])

    def test_single_colour_led(self):
        raw = reference()
        raw["led"] = {"green_pin": 22, "active_high": False}
        b = make_board(raw)
        self.assertEqual(sim.level(22), 1)           # off (active low)
        b.set_led(B.LED_UNAVAILABLE)                 # red on an RGB board
        self.assertEqual(sim.level(22), 0)

    def test_unknown_pattern(self):
        b = make_board()
        self.assertRaises(ValueError, b.set_led, 99)


class Rs485(unittest.TestCase):
    def test_de_high_for_the_whole_frame(self):
        b = make_board()
        u = b.meter_uart()
        frame = b"\x01\x04\x00\x00\x00\x02\x71\xcb"
        t0 = sim.now_us
        self.assertEqual(u.write(frame), 8)
        peer = sim.uart_peer(2)
        start, end, data = peer.frames[-1]
        self.assertEqual(data, frame)
        # DE rises before the UART is given the first byte, and stays up to the last bit.
        log = sim.events()
        de_up = [i for i, e in enumerate(log) if e[1:] == ("pin_level", 4, 1)][-1]
        tx = [i for i, e in enumerate(log) if e[1] == "uart_tx"][-1]
        self.assertTrue(de_up < tx)
        for t in range(start, end + 1, 100):
            self.assertEqual(sim.level_at(4, t), 1)
        self.assertEqual(sim.level(4), 0)                 # released afterwards
        released = sim.history(4)[-1][0]
        self.assertTrue(released >= end + u.char_us)      # one character of margin
        self.assertTrue(released - t0 <= (len(frame) + 3) * u.char_us)

    def test_reads_and_line_settings(self):
        b = make_board()
        u = b.meter_uart(baudrate=19200, parity="E")
        self.assertEqual(u.char_us, (11 * 1000000 + 19199) // 19200)
        sim.uart_peer(2).send(b"\x01\x04\x04")
        self.assertEqual(u.any(), 3)
        buf = bytearray(2)
        self.assertEqual(u.readinto(buf), 2)
        self.assertEqual(u.read(1), b"\x04")
        self.assertIsNone(u.read())
        self.assertIs(b.meter_uart(baudrate=19200, parity="E"), u)
        self.assertRaises(ValueError, b.meter_uart, 9600, "X")

    def test_smallest_rx_buffer_the_board_file_accepts_builds_the_uart(self):
        from drivers.boardfile import SECTIONS
        raw = reference()
        raw["rs485"]["rxbuf"] = SECTIONS["rs485"][1]["rxbuf"][2]
        self.assertIsNotNone(make_board(raw).meter_uart())

    def test_manual_de(self):
        b = make_board()
        u = b.meter_uart()
        u.set_de(True)
        self.assertEqual(sim.level(4), 1)
        u.set_de(False)
        self.assertEqual(sim.level(4), 0)

    def test_board_without_rs485(self):
        raw = reference()
        del raw["rs485"]
        self.assertIsNone(make_board(raw).meter_uart())


class System(unittest.TestCase):
    def test_reset_causes(self):
        b = make_board()
        for code, name in ((machine.PWRON_RESET, "power_on"), (machine.HARD_RESET, "hard"),
                           (machine.WDT_RESET, "watchdog"), (machine.SOFT_RESET, "soft"),
                           (machine.DEEPSLEEP_RESET, "deep_sleep"), (99, "unknown")):
            sim.reset_cause = code
            self.assertEqual(b.reset_cause(), name)

    def test_wall_time_only_once_set(self):
        b = make_board()
        self.assertIsNone(b.wall_time())             # RTC still near 2000-01-01
        machine.RTC().datetime((2026, 1, 1, 3, 0, 0, 0, 0))
        self.assertEqual(b.wall_time(), 1767225600)
        sim.advance_ms(90000)
        self.assertEqual(b.wall_time(), 1767225690)
        self.assertEqual(unix_seconds(2024, 2, 29, 12, 0, 0), 1709208000)

    def test_storage_and_time(self):
        b = make_board()
        self.assertEqual(b.storage_root(), "/data")
        t0 = b.ticks_ms()
        b.sleep_ms(25)
        self.assertEqual(b.ticks_ms() - t0, 25)

    def test_watchdog_only_after_start(self):
        b = make_board()
        b.feed_watchdog()
        self.assertEqual(sim.wdt_timeout_ms, 0)
        b.start_watchdog()
        self.assertEqual(sim.wdt_timeout_ms, 8000)
        sim.advance_ms(7000)
        b.feed_watchdog()
        sim.advance_ms(7000)
        self.assertFalse(sim.wdt_expired)
        # Unfed for longer than watchdog_ms: the chip restarts.
        try:    # (unittest 0.4's assertRaises only catches Exception)
            sim.advance_ms(2000)
            self.fail("the watchdog did not reset the chip")
        except SystemExit:
            pass
        self.assertTrue(sim.wdt_expired)
        self.assertEqual(sim.reset_count, 1)

    def test_reset_and_safe_state(self):
        b = make_board()
        b.set_pilot(500)
        b.set_contactor(True)
        b.safe_state()
        self.assertEqual(sim.level(26), 0)
        self.assertEqual(sim.pwm(25).duty_u16(), 0)   # state F
        try:
            b.reset()
            self.fail("reset returned")
        except SystemExit:
            pass
        self.assertEqual(sim.reset_count, 1)

    def test_contactor_is_the_first_pin_driven(self):
        make_board()
        first = sim.events()[0]
        self.assertEqual(first[1:], ("pin_mode", 26, machine.Pin.OUT))
        self.assertEqual(sim.history(26)[0][1], 0)


class EspBoardNetwork(unittest.TestCase):
    def test_start_network_joins_and_steps_without_blocking(self):
        board = make_board()
        board.network_step(0)                    # nothing configured: nothing happens
        self.assertIsNone(board.wifi)
        board.start_network("depot", "pw", "")
        board.network_step(0)
        self.assertEqual(board.wifi.attempts, 1)
        self.assertFalse(board.wifi.wlan.isconnected())
