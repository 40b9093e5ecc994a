# The fake ESP32 machine/esp32/network modules behave like the ESP32 port where drivers
# could tell the difference. Runs on CPython (pytest) and the unix port (tests/mprun.py).
import errno
import unittest

import esp32
import machine
import network
from machine import ADC, PWM, UART, WDT, Pin, Timer

sim = machine.sim


class PinRules(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_invalid_pins_raise_value_error(self):
        for bad in (20, 24, 28, 31, 40, -1):
            self.assertRaises(ValueError, Pin, bad)

    def test_configuring_a_flash_pin_loses_the_flash(self):
        # GPIO 6-11 carry the SPI flash: init() routes the pad to the GPIO matrix
        # (esp_rom_gpio_pad_select_gpio), the next flash access fails and the chip restarts.
        Pin(7)                                  # no arguments: nothing is configured
        try:
            Pin(7, Pin.OUT, value=0)
            self.fail("GPIO 7 configured without losing the flash")
        except machine.SimulatedReset:
            pass
        self.assertEqual(sim.reset_count, 1)

    def test_input_only_pins_cannot_drive(self):
        for pin in range(34, 40):
            self.assertRaises(ValueError, Pin, pin, Pin.OUT)
            self.assertRaises(ValueError, Pin, pin, Pin.OPEN_DRAIN)
            self.assertRaises(ValueError, PWM, Pin(pin))
        Pin(34, Pin.IN)   # as an input it is fine

    def test_value_before_mode_never_glitches(self):
        Pin(26, Pin.OUT, value=1)
        self.assertEqual(sim.history(26), [(0, 1)])
        p = Pin(27, Pin.OUT)
        p.value(1)
        p.value(1)
        p.value(0)
        self.assertEqual(sim.history(27), [(0, 0), (0, 1), (0, 0)])

    def test_inputs_read_injected_level_or_pull(self):
        a = Pin(27, Pin.IN, Pin.PULL_UP)
        self.assertEqual(a.value(), 1)
        sim.set_input(27, 0)
        self.assertEqual(a.value(), 0)
        # GPIO 34-39 have no pulls: an unconnected input floats (reads 0 here).
        b = Pin(35, Pin.IN, Pin.PULL_UP)
        self.assertIsNone(sim.level(35))
        self.assertEqual(b.value(), 0)
        sim.set_input(35, lambda t: 1 if t >= 1000 else 0)
        self.assertEqual(b.value(), 0)
        sim.advance_us(1000)
        self.assertEqual(b.value(), 1)

    def test_irq_on_injected_edges(self):
        seen = []
        p = Pin(27, Pin.IN, Pin.PULL_UP)
        p.irq(lambda pin: seen.append(pin.value()), Pin.IRQ_FALLING)
        sim.set_input(27, 0)
        sim.set_input(27, 0)
        sim.set_input(27, 1)
        sim.set_input(27, 0)
        self.assertEqual(seen, [0, 0])

    def test_level_at_follows_simulated_time(self):
        p = Pin(26, Pin.OUT, value=0)
        sim.advance_ms(5)
        p.on()
        sim.advance_ms(5)
        p.off()
        self.assertEqual(sim.level_at(26, 4999), 0)
        self.assertEqual(sim.level_at(26, 5000), 1)
        self.assertEqual(sim.level_at(26, 10000), 0)


class AdcRules(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_only_adc_pins(self):
        self.assertRaises(ValueError, ADC, Pin(5))
        self.assertRaises(ValueError, ADC, Pin(23))
        ADC(Pin(36), atten=ADC.ATTN_11DB)

    def test_adc2_fails_while_wifi_is_active(self):
        adc = ADC(Pin(4), atten=ADC.ATTN_11DB)
        sim.set_adc(4, 1000)
        self.assertEqual(adc.read_uv(), 1000000)
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        try:
            adc.read_uv()
            self.fail("ADC2 read with Wi-Fi active")
        except OSError as e:
            self.assertEqual(e.args[0], errno.ETIMEDOUT)
        adc1 = ADC(Pin(36), atten=ADC.ATTN_11DB)
        sim.set_adc(36, 1200)
        self.assertEqual(adc1.read_uv(), 1200000)
        wlan.active(False)
        self.assertEqual(adc.read_uv(), 1000000)

    def test_injected_voltage_and_attenuation(self):
        adc = ADC(Pin(39), atten=ADC.ATTN_11DB)
        sim.set_adc(39, 1550)
        # mp_machine_adc_read_u16: raw 12-bit reading scaled by bit replication.
        raw = 1550 * 4095 // 3100
        self.assertEqual(adc.read(), raw)
        self.assertEqual(adc.read_u16(), (raw << 4) | (raw >> 8))
        sim.set_adc(39, 3100)
        self.assertEqual(adc.read_u16(), 65535)
        sim.set_adc(39, 5000)
        self.assertEqual(adc.read_uv(), 3100000)   # clamps at full scale
        adc.atten(ADC.ATTN_0DB)
        sim.set_adc(39, 500)
        self.assertEqual(adc.read_uv(), 500000)
        sim.set_adc(39, 1500)
        self.assertEqual(adc.read_uv(), 950000)
        self.assertRaises(ValueError, adc.atten, 7)

    def test_attenuation_belongs_to_the_channel(self):
        # ports/esp32/machine_adc.c: madc_init_helper: every ADC(pin) sets the channel's
        # attenuation to `atten`, or 11 dB when none is given, and the block's width back to
        # 12 bits; width() sets the whole block.
        ADC(Pin(36), atten=ADC.ATTN_0DB)
        again = ADC(Pin(36))
        sim.set_adc(36, 2000)
        self.assertEqual(again.read_uv(), 2000000)      # 11 dB again, not the 0 dB before
        fresh = ADC(Pin(39))
        sim.set_adc(39, 2000)
        self.assertEqual(fresh.read_uv(), 2000000)
        again.width(ADC.WIDTH_9BIT)
        sim.set_adc(39, 5000)
        self.assertEqual(fresh.read(), 511)
        ADC(Pin(39), atten=ADC.ATTN_11DB)
        self.assertEqual(fresh.read(), 4095)            # the constructor reset the width

    def test_each_conversion_takes_simulated_time(self):
        adc = ADC(Pin(36), atten=ADC.ATTN_11DB)
        sim.set_adc(36, lambda t: 100 + t // 25)
        first = adc.read_uv()
        second = adc.read_uv()
        self.assertEqual(second - first, 1000)
        self.assertEqual(sim.now_us, 2 * sim.adc_read_us)


class PwmRules(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_ranges(self):
        self.assertRaises(ValueError, PWM, Pin(25), freq=0)
        self.assertRaises(ValueError, PWM, Pin(25), freq=40000001)
        pwm = PWM(Pin(25), freq=1000, duty_u16=0)
        self.assertRaises(ValueError, pwm.duty_u16, 65536)
        self.assertRaises(ValueError, pwm.duty_u16, -1)
        self.assertEqual(pwm.freq(), 1000)

    def test_waveform_follows_duty(self):
        pwm = PWM(Pin(25), freq=1000, duty_u16=65535 // 4)
        highs = 0
        for t in range(0, 1000, 10):
            if sim.pwm_output_high(25, t):
                highs += 1
        self.assertEqual(highs, 25)
        pwm.duty_u16(65535)
        self.assertTrue(sim.pwm_output_high(25, 999))
        pwm.duty_u16(0)
        self.assertFalse(sim.pwm_output_high(25, 0))
        self.assertEqual([v for _t, _k, _p, v in sim.events("pwm_duty", 25)], [16383, 65535, 0])

    def test_deinit_stops_the_output(self):
        pwm = PWM(Pin(25), freq=1000, duty_u16=65535)
        pwm.deinit()
        self.assertIsNone(sim.pwm(25))
        # machine_pwm.c pwm_is_active(): RuntimeError("PWM is inactive"), getters included.
        self.assertRaises(RuntimeError, pwm.duty_u16, 100)
        self.assertRaises(RuntimeError, pwm.duty_u16)
        self.assertRaises(RuntimeError, pwm.freq)
        self.assertRaises(RuntimeError, pwm.freq, 1000)
        self.assertRaises(RuntimeError, pwm.duty_ns)

    def test_signature_and_duty_ns_range(self):
        # PWM(dest, freq) takes freq positionally; duty_ns beyond the period is refused.
        pwm = PWM(Pin(25), 1000, duty_u16=0)
        self.assertEqual(pwm.freq(), 1000)
        pwm.duty_ns(250000)
        self.assertEqual(pwm.duty_u16(), 16384)
        self.assertRaises(ValueError, pwm.duty_ns, 1000001)
        self.assertRaises(ValueError, pwm.duty_ns, -1)
        self.assertRaises(TypeError, PWM, Pin(25), 1000, 5)


class UartRules(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_parameter_validation(self):
        self.assertRaises(ValueError, UART, 3)
        self.assertRaises(ValueError, UART, 2, baudrate=0)
        self.assertRaises(ValueError, UART, 2, bits=9)
        self.assertRaises(TypeError, UART, 2, parity="E")
        self.assertRaises(ValueError, UART, 2, stop=3)
        self.assertRaises(ValueError, UART, 2, tx=34, rx=16)
        self.assertRaises(ValueError, UART, 2, tx=17, rx=20)

    def test_rx_buffer_must_exceed_the_hardware_fifo(self):
        # uart_driver_install() refuses an rx ring buffer not larger than the 128-byte FIFO.
        self.assertRaises(OSError, UART, 2, tx=17, rx=16, rxbuf=128)
        u = UART(2, tx=17, rx=16, rxbuf=129)
        self.assertRaises(OSError, u.init, rxbuf=64)

    def test_parity_is_odd_for_odd_numbers(self):
        # machine_uart.c: None disables parity, any other int is odd when `parity & 1`.
        u = UART(2, baudrate=9600, parity=3, tx=17, rx=16)
        self.assertEqual(u.char_us(), 1146)
        u.init(parity=None)
        self.assertEqual(u.char_us(), 1042)

    def test_init_discards_pending_input(self):
        # init() ends in uart_flush_input(): bytes received before it are gone.
        u = UART(2, baudrate=9600, tx=17, rx=16)
        sim.uart_peer(2).send(b"stale")
        self.assertEqual(u.any(), 5)
        u.init(baudrate=19200)
        self.assertEqual(u.any(), 0)
        self.assertIsNone(u.read())

    def test_transmission_takes_wire_time(self):
        u = UART(2, baudrate=9600, tx=17, rx=16)
        self.assertEqual(u.char_us(), 1042)
        u.write(b"\x01\x03\x00\x00\x00\x0a\xc5\xcd")
        self.assertFalse(u.txdone())
        u.flush()
        self.assertTrue(u.txdone())
        self.assertEqual(sim.now_us, 8 * 1042)
        peer = sim.uart_peer(2)
        self.assertEqual(peer.take(), b"\x01\x03\x00\x00\x00\x0a\xc5\xcd")
        self.assertEqual(peer.frames[0][:2], (0, 8 * 1042))

    def test_peer_bytes_and_responder(self):
        u = UART(1, baudrate=115200, tx=17, rx=16)
        self.assertIsNone(u.read())
        peer = sim.uart_peer(1)
        peer.send(b"abc")
        self.assertEqual(u.any(), 3)
        buf = bytearray(2)
        self.assertEqual(u.readinto(buf), 2)
        self.assertEqual(bytes(buf), b"ab")
        self.assertEqual(u.read(), b"c")
        peer.responder = lambda frame: b"ok:" + frame
        peer.reply_delay_us = 500
        u.write(b"xyz")
        self.assertEqual(u.any(), 0)
        sim.advance_us(3 * u.char_us() + 500)
        self.assertEqual(u.read(), b"ok:xyz")


class WatchdogTimerReset(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_watchdog_cannot_be_stopped_and_expires_unfed(self):
        w = WDT(timeout=1000)
        self.assertFalse(hasattr(w, "deinit"))
        sim.advance_ms(900)
        w.feed()
        sim.advance_ms(900)
        self.assertFalse(sim.wdt_expired)
        # The task watchdog panics and restarts the chip: nothing after the expiry runs.
        try:    # (unittest 0.4's assertRaises only catches Exception)
            sim.advance_ms(200)
            self.fail("the watchdog did not reset the chip")
        except machine.SimulatedReset:
            pass
        self.assertTrue(sim.wdt_expired)
        self.assertEqual(sim.reset_count, 1)
        resets = sim.events("reset")
        self.assertEqual(resets[-1][3], machine.WDT_RESET)
        self.assertEqual(resets[-1][0], sim.events("wdt_expired")[-1][0])
        self.assertTrue(resets[-1][0] <= 1900 * 1000 + 1000 * 1000 + 1)
        self.assertRaises(ValueError, WDT, timeout=0)
        self.assertRaises(ValueError, WDT, 1, 5000)

    def test_timer_one_shot_and_periodic(self):
        fired = []
        t = Timer(0)
        t.init(mode=Timer.ONE_SHOT, period=10, callback=lambda _t: fired.append(sim.now_us))
        p = Timer(1, mode=Timer.PERIODIC, period=4, callback=lambda _t: fired.append(-sim.now_us))
        sim.advance_ms(13)
        p.deinit()
        sim.advance_ms(10)
        self.assertEqual(fired, [-4000, -8000, 10000, -12000])
        self.assertRaises(ValueError, Timer, 4)

    def test_reset_unwinds_and_is_counted(self):
        self.assertEqual(machine.reset_cause(), machine.PWRON_RESET)
        try:
            machine.reset()
            self.fail("reset returned")
        except SystemExit:
            pass
        self.assertEqual(sim.reset_count, 1)
        sim.power_cycle(machine.WDT_RESET)
        self.assertEqual(machine.reset_cause(), machine.WDT_RESET)

    def test_cpu_frequency_and_id(self):
        self.assertEqual(machine.freq(), 160000000)
        machine.freq(240000000)
        self.assertEqual(machine.freq(), 240000000)
        self.assertRaises(ValueError, machine.freq, 100000000)
        self.assertEqual(len(machine.unique_id()), 6)

    def test_clock_wraps_like_the_esp32(self):
        c = sim.clock
        sim.now_us = ((1 << 30) - 5) * 1000
        before = c.ticks_ms()
        c.sleep_ms(10)
        self.assertTrue(c.ticks_ms() < before)
        self.assertEqual(c.ticks_diff(c.ticks_ms(), before), 10)

    def test_rtc_set_and_read(self):
        rtc = machine.RTC()
        rtc.datetime((2026, 3, 1, 0, 12, 30, 45, 0))
        dt = rtc.datetime()
        self.assertEqual(dt[:3], (2026, 3, 1))
        self.assertEqual(dt[4:7], (12, 30, 45))
        self.assertEqual(dt[3], 6)   # Sunday
        sim.advance_ms(15000)
        self.assertEqual(rtc.datetime()[6], 0)
        self.assertEqual(rtc.datetime()[5], 31)


class NvsCommit(unittest.TestCase):
    def setUp(self):
        sim.reset()

    def test_uncommitted_writes_are_lost_at_a_reset(self):
        nvs = esp32.NVS("station")
        nvs.set_i32("boots", 3)
        nvs.commit()
        nvs.set_i32("boots", 4)
        self.assertEqual(nvs.get_i32("boots"), 4)
        sim.power_cycle()
        self.assertEqual(esp32.NVS("station").get_i32("boots"), 3)

    def test_blobs_and_missing_keys(self):
        nvs = esp32.NVS("station")
        self.assertRaises(OSError, nvs.get_i32, "nothing")
        nvs.set_blob("crash", b"abc")
        nvs.commit()
        buf = bytearray(8)
        self.assertEqual(nvs.get_blob("crash", buf), 3)
        self.assertEqual(bytes(buf[:3]), b"abc")

    def _esp_errno(self, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            return e.args[0]
        return None

    def test_errors_are_the_ports_check_esp_err(self):
        # check_esp_err() raises OSError(-esp_err_t): a missing key is -0x1102
        # (ESP_ERR_NVS_NOT_FOUND), not ENOENT; too long a key is -0x1109.
        nvs = esp32.NVS("station")
        self.assertEqual(self._esp_errno(nvs.get_i32, "nothing"), -0x1102)
        self.assertEqual(self._esp_errno(nvs.get_blob, "nothing", bytearray(4)), -0x1102)
        self.assertEqual(self._esp_errno(nvs.set_i32, "x" * 16, 1), -0x1109)
        self.assertEqual(self._esp_errno(esp32.NVS, "n" * 16), -0x1109)
        nvs.set_blob("crash", b"abcdef")
        self.assertEqual(self._esp_errno(nvs.get_blob, "crash", bytearray(2)), -0x110C)
        self.assertEqual(self._esp_errno(nvs.get_i32, "crash"), -0x1103)
        # mp_obj_get_int(): beyond the 32-bit word is OverflowError, not a ValueError.
        self.assertRaises(OverflowError, nvs.set_i32, "big", 1 << 31)
        nvs.set_i32("low", -(1 << 31))
        self.assertEqual(nvs.get_i32("low"), -(1 << 31))
