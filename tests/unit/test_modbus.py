"""Modbus RTU master: CRC, framing, timing and every way a reply goes wrong.

Runs on CPython and on the MicroPython unix port; time is simulated.
"""
import struct
import sys
import unittest

from firmware import modbus
from firmware.modbus import (ModbusMaster, ModbusError, crc16, silence_us, bits_per_char,
                             IDLE, PENDING, DONE, ERROR, ERR_TIMEOUT, ERR_CRC,
                             ERR_EXCEPTION, ERR_BAD_FRAME)
from meter_doubles import SimClock, ScriptedStream, SlaveStream, with_crc

IS_MICROPYTHON = sys.implementation.name == "micropython"


def run(master, clock, limit_ms=5000, step_ms=1):
    """Poll every step_ms of simulated time until DONE or ERROR."""
    end = clock.now + limit_ms
    while clock.now < end:
        status = master.poll(clock.now)
        if status == DONE or status == ERROR:
            return status
        clock.advance(step_ms)
    raise AssertionError("transaction did not finish")


class TestCrc(unittest.TestCase):
    def test_reference_vectors(self):
        self.assertEqual(crc16(b"123456789"), 0x4B37)

    def test_the_table_is_the_polynomial(self):
        # The two tables in flash against the bitwise CRC, byte for byte.
        def bitwise(data):
            crc = 0xFFFF
            for b in data:
                crc ^= b
                for _ in range(8):
                    crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
            return crc
        for n in range(256):
            self.assertEqual(crc16(bytes([n])), bitwise(bytes([n])), n)
            self.assertEqual(crc16(bytes([n, 255 - n, 7])), bitwise(bytes([n, 255 - n, 7])), n)
        c = crc16(bytes([0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]))
        self.assertEqual(bytes([c & 0xFF, c >> 8]), bytes([0xC5, 0xCD]))
        c = crc16(bytes([0x01, 0x04, 0x00, 0x00, 0x00, 0x02]))
        self.assertEqual(bytes([c & 0xFF, c >> 8]), bytes([0x71, 0xCB]))

    def test_frame_with_its_crc_checks_to_zero(self):
        self.assertEqual(crc16(with_crc(b"\x11\x03\x00\x6b\x00\x03")), 0)

    def test_range_arguments(self):
        buf = b"xx123456789yy"
        self.assertEqual(crc16(buf, 2, 11), 0x4B37)

    def test_float_reference(self):
        self.assertEqual(struct.pack(">f", 230.0), bytes([0x43, 0x66, 0x00, 0x00]))


class TestTiming(unittest.TestCase):
    def test_silence_at_9600_8n1_is_3_5_characters(self):
        # 10 bits per character: 1041.6 us, x3.5 = 3645 us.
        self.assertEqual(silence_us(9600, 10), 3645)
        self.assertEqual(ModbusMaster(ScriptedStream(SimClock()), 9600).silence_ms, 4)

    def test_parity_adds_a_bit(self):
        self.assertEqual(bits_per_char("E"), 11)
        self.assertEqual(bits_per_char("N"), 10)
        self.assertEqual(silence_us(9600, 11), 4010)

    def test_fixed_above_19200(self):
        self.assertEqual(silence_us(19200, 10), 18229 // 10)
        self.assertEqual(silence_us(38400, 10), 1750)
        self.assertEqual(silence_us(115200, 11), 1750)


class TestFrames(unittest.TestCase):
    def setUp(self):
        self.clock = SimClock(1000)
        self.stream = ScriptedStream(self.clock)
        self.m = ModbusMaster(self.stream, 9600, timeout_ms=100, retries=0)

    def test_read_request_bytes(self):
        self.m.start_read(1, 3, 0, 10)
        self.assertEqual(self.m.request, bytes([1, 3, 0, 0, 0, 10, 0xC5, 0xCD]))
        self.m.cancel()
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(self.m.request, bytes([1, 4, 0, 0, 0, 2, 0x71, 0xCB]))

    def test_write_single_request_bytes(self):
        self.m.start_write_single(0x11, 0x0001, 0x0003)
        self.assertEqual(self.m.request, with_crc(bytes([0x11, 6, 0, 1, 0, 3])))

    def test_write_multiple_request_bytes(self):
        self.m.start_write_multiple(0x11, 0x0001, [0x000A, 0x0102])
        self.assertEqual(self.m.request,
                         with_crc(bytes([0x11, 16, 0, 1, 0, 2, 4, 0, 0x0A, 1, 2])))

    def test_bad_arguments_raise_value_error_and_change_nothing(self):
        for args in ((0, 3, 0, 1), (248, 3, 0, 1), (1, 5, 0, 1), (1, 3, 0, 0),
                     (1, 3, 0, 126), (1, 4, 0xFFFF, 2), (1, 4, -1, 1)):
            self.assertRaises(ValueError, self.m.start_read, *args)
        self.assertRaises(ValueError, self.m.start_write_single, 1, 0, 0x10000)
        self.assertRaises(ValueError, self.m.start_write_multiple, 1, 0, [])
        self.assertRaises(ValueError, self.m.start_write_multiple, 1, 0, [1] * 124)
        self.assertEqual(self.m.poll(self.clock.now), IDLE)
        self.assertRaises(ValueError, ModbusMaster, self.stream, 9600, "X")

    def test_one_transaction_at_a_time(self):
        self.m.start_read(1, 4, 0, 2)
        self.assertRaises(ValueError, self.m.start_read, 1, 4, 0, 2)


class TestTransactions(unittest.TestCase):
    def setUp(self):
        self.clock = SimClock(5000)
        self.slave = SlaveStream(self.clock, {0: 0x4366, 1: 0x0000, 2: 0x1234, 3: 0xABCD})
        self.m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=0,
                              de=self.slave.set_de)

    def test_read_returns_registers(self):
        self.m.start_read(1, 4, 0, 4)
        self.assertEqual(run(self.m, self.clock), DONE)
        self.assertEqual(self.m.registers(), [0x4366, 0, 0x1234, 0xABCD])
        self.assertEqual(self.m.register(2), 0x1234)
        s = self.m.stats()
        self.assertEqual((s["requests"], s["replies"], s["timeouts"], s["crc_errors"]),
                         (1, 1, 0, 0))

    def test_de_is_raised_before_the_write_and_dropped_after_the_flush(self):
        self.m.start_read(1, 4, 0, 2)
        run(self.m, self.clock)
        kinds = [e[0] if e[0] != "de" else "de%d" % e[1] for e in self.slave.events]
        self.assertEqual(kinds, ["de1", "write", "flush", "de0"])

    def test_without_de_hook_there_is_no_flush_wait(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100)
        m.start_read(1, 4, 0, 2)
        run(m, self.clock)
        self.assertEqual([e[0] for e in self.slave.events], ["write"])

    def test_poll_never_waits_for_the_reply(self):
        self.slave.delay_ms = 50
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(self.m.poll(self.clock.now), PENDING)   # request written
        polls = 0
        while self.m.poll(self.clock.now) == PENDING:
            polls += 1
            self.clock.advance(10)
        self.assertTrue(polls >= 5)   # the loop went round while the meter was thinking
        self.assertEqual(self.m.poll(self.clock.now), DONE)

    def test_write_single_and_multiple_are_checked_against_the_echo(self):
        self.slave.fcs = (3,)
        self.m.start_write_single(1, 10, 0x55AA)
        self.assertEqual(run(self.m, self.clock), DONE)
        self.assertEqual(self.slave.regs[10], 0x55AA)
        self.m.start_write_multiple(1, 20, [1, 2, 3])
        self.assertEqual(run(self.m, self.clock), DONE)
        self.assertEqual([self.slave.regs[a] for a in (20, 21, 22)], [1, 2, 3])

    def test_write_echo_mismatch_is_a_bad_frame(self):
        stream = ScriptedStream(self.clock)
        m = ModbusMaster(stream, 9600, timeout_ms=100, retries=0)
        stream.on_write = lambda req: stream.feed(with_crc(bytes([1, 6, 0, 10, 0, 1])), 3)
        m.start_write_single(1, 10, 2)
        self.assertEqual(run(m, self.clock), ERROR)
        self.assertEqual(m.error, ERR_BAD_FRAME)
        self.assertEqual(m.bad_frames, 1)

    def test_exception_codes_are_decoded_and_not_retried(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=3)
        for code in (1, 2, 3, 4):
            self.slave.set_fault("exception", 1, code)
            m.start_read(1, 4, 0, 2)
            self.assertEqual(run(m, self.clock), ERROR)
            self.assertEqual(m.error, ERR_EXCEPTION)
            self.assertEqual(m.exception_code, code)
        self.assertEqual(m.exceptions, 4)
        self.assertEqual(m.retries, 0)
        self.assertEqual(m.requests, 4)
        self.assertEqual(modbus.EXCEPTION_NAMES[2], "illegal data address")

    def test_reading_a_missing_register_is_illegal_address(self):
        self.m.start_read(1, 4, 2, 4)
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.exception_code, 2)

    def test_no_reply_times_out_in_simulated_time(self):
        self.slave.set_fault("silent")
        self.m.start_read(1, 4, 0, 2)
        t0 = self.clock.now
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.error, ERR_TIMEOUT)
        # 100 ms for the slave plus request and reply on the wire: 17 bytes at 9600 8N1.
        self.assertEqual(self.clock.now - t0, 100 + 18)
        self.assertEqual(self.m.timeouts, 1)

    def test_a_long_reply_gets_its_transmission_time(self):
        # 76 registers: 157 reply bytes, 164 ms at 9600 baud, on top of the timeout.
        regs = {}
        for a in range(76):
            regs[a] = a
        slave = SlaveStream(self.clock, regs)
        m = ModbusMaster(slave, 9600, timeout_ms=100, retries=0)
        frame_ms = (157 + 8) * 1041 // 1000
        slave.delay_ms = frame_ms + 90          # meter latency 90 ms < timeout
        m.start_read(1, 4, 0, 76)
        self.assertEqual(run(m, self.clock), DONE)
        self.assertEqual(m.register(75), 75)

    def test_retries_then_success(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=2)
        self.slave.set_fault("silent", 2)
        m.start_read(1, 4, 0, 2)
        self.assertEqual(run(m, self.clock), DONE)
        s = m.stats()
        # Counters count attempts: two timed out, the third was answered.
        self.assertEqual((s["requests"], s["retries"], s["timeouts"], s["replies"]), (3, 2, 2, 1))

    def test_retries_exhausted(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=1)
        self.slave.set_fault("silent")
        m.start_read(1, 4, 0, 2)
        self.assertEqual(run(m, self.clock), ERROR)
        self.assertEqual((m.requests, m.retries, m.timeouts), (2, 1, 2))

    def test_retry_waits_the_inter_frame_silence(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=1)
        self.slave.set_fault("crc", 1)
        m.start_read(1, 4, 0, 2)
        times = []
        self.slave.on_write = lambda req, f=self.slave._answer: (times.append(self.clock.now),
                                                                 f(req))
        self.assertEqual(run(m, self.clock), DONE)
        # The corrupt reply arrived 2 ms after the request; the retry leaves > 3.5 chars.
        self.assertEqual(len(times), 2)
        self.assertTrue(times[1] - (times[0] + 2) > m.silence_ms)

    def test_crc_error_ends_early_once_the_line_is_silent(self):
        self.slave.set_fault("crc")
        self.m.start_read(1, 4, 0, 2)
        t0 = self.clock.now
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.error, ERR_CRC)
        self.assertEqual(self.m.crc_errors, 1)
        self.assertTrue(self.clock.now - t0 < 20)   # did not sit out the 100 ms timeout

    def test_reply_from_another_slave_is_skipped(self):
        self.slave.set_fault("other_slave")
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.error, ERR_TIMEOUT)
        self.assertEqual((self.m.bad_frames, self.m.replies, self.m.timeouts), (1, 0, 1))

    def test_other_slave_then_ours(self):
        stream = ScriptedStream(self.clock)
        m = ModbusMaster(stream, 9600, timeout_ms=100, retries=0)
        other = with_crc(bytes([7, 4, 4, 1, 2, 3, 4]))
        ours = with_crc(bytes([1, 4, 4, 0x43, 0x66, 0, 0]))
        stream.on_write = lambda req: (stream.feed(other, 2), stream.feed(ours, 20))
        m.start_read(1, 4, 0, 2)
        self.assertEqual(run(m, self.clock), DONE)
        self.assertEqual(m.registers(), [0x4366, 0])
        self.assertEqual((m.bad_frames, m.replies), (1, 1))

    def test_truncated_reply_is_a_bad_frame(self):
        self.slave.set_fault("truncated")
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.error, ERR_BAD_FRAME)
        self.assertEqual((self.m.bad_frames, self.m.timeouts), (1, 0))

    def test_garbage_before_the_frame_is_skipped(self):
        self.slave.set_fault("garbage")
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), DONE)
        self.assertEqual(self.m.registers(), [0x4366, 0])
        self.assertEqual(self.m.bad_frames, 1)

    def test_noise_that_looks_like_a_long_foreign_header_does_not_hide_our_reply(self):
        stream = ScriptedStream(self.clock)
        m = ModbusMaster(stream, 9600, timeout_ms=100, retries=0)
        noise = bytes([9, 4, 200, 1, 1])        # "slave 9, 200 data bytes" never completes
        ours = with_crc(bytes([1, 4, 4, 0x43, 0x66, 0, 0]))
        stream.on_write = lambda req: stream.feed(noise + ours, 2)
        m.start_read(1, 4, 0, 2)
        self.assertEqual(run(m, self.clock), DONE)
        self.assertEqual(m.register(0), 0x4366)

    def test_reply_split_over_many_polls(self):
        stream = ScriptedStream(self.clock)
        m = ModbusMaster(stream, 9600, timeout_ms=100, retries=0)
        frame = with_crc(bytes([1, 3, 4, 0, 1, 0, 2]))
        stream.on_write = lambda req: [stream.feed(frame[k:k + 1], 2 + k) for k in range(len(frame))]
        m.start_read(1, 3, 0, 2)
        self.assertEqual(run(m, self.clock), DONE)
        self.assertEqual(m.registers(), [1, 2])

    def test_slow_reply_inside_the_timeout_is_taken(self):
        self.slave.delay_ms = 90
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), DONE)

    def test_slow_reply_beyond_the_timeout_is_dropped_before_the_next_request(self):
        self.slave.delay_ms = 150
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), ERROR)
        self.assertEqual(self.m.error, ERR_TIMEOUT)
        self.clock.advance(100)              # the late reply is now in the receiver
        self.slave.delay_ms = 2
        self.slave.regs[0] = 0x1111
        self.m.start_read(1, 4, 0, 2)
        self.assertEqual(run(self.m, self.clock), DONE)
        self.assertEqual(self.m.register(0), 0x1111)   # not the stale 0x4366
        self.assertEqual(self.m.bad_frames, 1)

    def test_flood_of_noise_never_overruns_the_buffer(self):
        stream = ScriptedStream(self.clock)
        m = ModbusMaster(stream, 9600, timeout_ms=100, retries=0)
        stream.on_write = lambda req: stream.feed(bytes([0xFF]) * 1000, 1)
        m.start_read(1, 4, 0, 2)
        self.assertEqual(run(m, self.clock), ERROR)
        self.assertEqual(m.error, ERR_BAD_FRAME)

    def test_ticks_wrap_during_a_transaction(self):
        self.clock.now = (1 << 30) - 30
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=0)
        self.slave.set_fault("silent")
        m.start_read(1, 4, 0, 2)
        polls = 0
        while True:
            status = m.poll(self.clock.now & ((1 << 30) - 1))
            if status != PENDING:
                break
            polls += 1
            self.clock.advance(1)
        self.assertEqual(m.error, ERR_TIMEOUT)
        self.assertEqual(polls, 118)

    def test_first_request_after_a_long_idle_is_not_held_back(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=0)
        m.start_read(1, 4, 0, 2)
        run(m, self.clock)
        self.clock.advance((1 << 29) + 5)       # ticks_diff to the last reply is now negative
        m.start_read(1, 4, 0, 2)
        m.poll(self.clock.now & ((1 << 30) - 1))
        self.assertEqual(m.requests, 2)

    def test_blocking_wrapper(self):
        m = ModbusMaster(self.slave, 9600, timeout_ms=100, retries=0)
        regs = m.read_registers(1, 4, 0, 4, clock=self.clock, sleep=self.clock.advance)
        self.assertEqual(regs, [0x4366, 0, 0x1234, 0xABCD])
        self.slave.set_fault("exception", 1, 2)
        try:
            m.read_registers(1, 4, 0, 2, clock=self.clock, sleep=self.clock.advance)
            raise AssertionError("no exception")
        except ModbusError as e:
            self.assertEqual(e.kind, ERR_EXCEPTION)
            self.assertEqual(e.exception_code, 2)
        self.slave.fcs = (3, 4)
        m.write_register(1, 30, 7, clock=self.clock, sleep=self.clock.advance)
        m.write_registers(1, 31, [8, 9], clock=self.clock, sleep=self.clock.advance)
        self.assertEqual([self.slave.regs[a] for a in (30, 31, 32)], [7, 8, 9])

    def test_waiting_for_a_reply_allocates_nothing(self):
        if not IS_MICROPYTHON:
            raise unittest.SkipTest("heap_lock is MicroPython only")
        import micropython
        self.slave.delay_ms = 1000
        self.m.start_read(1, 4, 0, 2)
        self.m.poll(self.clock.now)             # sends (allocation allowed here)
        micropython.heap_lock()
        try:
            for _ in range(50):
                self.clock.now += 1
                self.m.poll(self.clock.now)
        finally:
            micropython.heap_unlock()


if __name__ == "__main__":
    unittest.main()
