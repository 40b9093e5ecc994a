"""Meter register maps: decoding every map, the codec, the poll plan, custom maps.

Runs on CPython and on the MicroPython unix port.
"""
import json
import struct
import unittest

from firmware import meters
from firmware.meters import (load_map, MeterMapError, decode_value, encode_value,
                             f32_bits_scaled, BUILTIN_NAMES)

# One reading in firmware units: dV, mA, W, Wh.
SAMPLE = [2301, 2315, 2288, 15999, 16012, 15987, 11034, 12345678, 4321]


def register_bytes(mmap, regs, start, count):
    out = bytearray()
    for a in range(start, start + count):
        v = regs.get(a, 0)
        out.append(v >> 8)
        out.append(v & 0xFF)
    return out


def decode_all(mmap, values):
    regs = mmap.encode(values)
    out = [0] * meters.N_QUANTITIES
    for step, (start, count, _a, _b) in enumerate(mmap.plan):
        bad = mmap.decode(step, register_bytes(mmap, regs, start, count), 0, out)
        if bad:
            raise AssertionError("undecodable values")
    return out


def expected(mmap, values):
    """`values` as the meter can show them: integer registers with a coarser unit
    (ABB 0.01 A, 0.01 kWh; EM340 0.1 kWh) round to that unit."""
    want = list(values)
    for _addr, _w, q, code, mul, _div in mmap.items:
        if code not in (meters.ENC_F32, meters.ENC_F32_CDAB) and mul > 1:
            want[q] = (want[q] + mul // 2) // mul * mul
    if mmap.phases == 1:
        want[1] = want[2] = want[4] = want[5] = 0
    if not mmap.has_export:
        want[meters.EXPORT] = 0
    return want


class TestCodec(unittest.TestCase):
    def test_float_230_volts(self):
        buf = bytes([0x43, 0x66, 0x00, 0x00])
        self.assertEqual(decode_value(buf, 0, meters.ENC_F32, 10, 1), 2300)
        self.assertEqual(decode_value(bytes([0, 0, 0x43, 0x66]), 0, meters.ENC_F32_CDAB, 10, 1),
                         2300)

    def test_float_decoding_is_exact_integer_arithmetic(self):
        for x in (0.0, 1.0, -1.0, 0.5, 230.1, 15.999, 12345.678, 1e-30, -7.25):
            bits = struct.unpack(">I", struct.pack(">f", x))[0]
            f = struct.unpack(">f", struct.pack(">f", x))[0]
            want = int(abs(f) * 1000 + 0.5) * (1 if f >= 0 else -1)
            self.assertEqual(f32_bits_scaled(bits, 1000, 1), want)

    def test_nan_and_infinity_are_not_numbers(self):
        self.assertIsNone(f32_bits_scaled(0x7FC00000, 1, 1))
        self.assertIsNone(f32_bits_scaled(0x7F800000, 1, 1))
        self.assertIsNone(f32_bits_scaled(0xFF800000, 1, 1))

    def test_int_encodings(self):
        self.assertEqual(decode_value(bytes([0xFF, 0xFF, 0xFF, 0xFE]), 0, meters.ENC_I32, 1, 1), -2)
        self.assertEqual(decode_value(bytes([0xFF, 0xFE, 0xFF, 0xFF]), 0, meters.ENC_I32_CDAB, 1, 1),
                         -2)
        self.assertEqual(decode_value(bytes([0xFF, 0xFF, 0xFF, 0xFE]), 0, meters.ENC_U32, 1, 1),
                         0xFFFFFFFE)
        self.assertEqual(decode_value(bytes([0x00, 0x01, 0x00, 0x02]), 0, meters.ENC_U32_CDAB, 1, 1),
                         0x00020001)
        self.assertEqual(decode_value(bytes([0, 0, 0, 1, 0, 0, 0, 0]), 0, meters.ENC_U64, 1, 1),
                         1 << 32)
        self.assertEqual(decode_value(bytes([0x80, 0x00]), 0, meters.ENC_I16, 1, 1), -32768)
        self.assertEqual(decode_value(bytes([0x80, 0x00]), 0, meters.ENC_U16, 1, 1), 32768)

    def test_scaling_rounds_half_away_from_zero(self):
        # ABB power in 0.01 W -> W.
        self.assertEqual(decode_value(bytes([0, 0, 0, 150]), 0, meters.ENC_I32, 1, 100), 2)
        self.assertEqual(decode_value(bytes([0xFF, 0xFF, 0xFF, 0x6A]), 0, meters.ENC_I32, 1, 100), -2)
        self.assertEqual(decode_value(bytes([0, 0, 0, 149]), 0, meters.ENC_I32, 1, 100), 1)

    def test_encode_is_the_inverse(self):
        for name, code, _w in meters.ENCODINGS:
            for value, mul, div in ((1234, 1, 1), (-55, 1, 1), (12340, 10, 1), (7, 1, 100)):
                if value < 0 and name.startswith("u"):
                    continue
                words = encode_value(code, value, mul, div)
                buf = bytearray()
                for w in words:
                    buf.append(w >> 8)
                    buf.append(w & 0xFF)
                self.assertEqual(decode_value(buf, 0, code, mul, div), value, name)


class TestFloat32Energy(unittest.TestCase):
    """A float32 kWh register keeps every Wh only below 2**14 kWh."""

    def roundtrip(self, wh):
        words = encode_value(meters.ENC_F32, wh, 1000, 1)
        buf = bytes([words[0] >> 8, words[0] & 0xFF, words[1] >> 8, words[1] & 0xFF])
        return decode_value(buf, 0, meters.ENC_F32, 1000, 1)

    def test_exact_below_16384_kwh(self):
        for wh in (1, 999, 12345678, 16383999, 8191999, 16383001):
            self.assertEqual(self.roundtrip(wh), wh)

    def test_two_wh_steps_above(self):
        errors = [abs(self.roundtrip(wh) - wh) for wh in range(16384001, 16384021)]
        self.assertTrue(max(errors) >= 1)
        self.assertTrue(max(errors) <= 1)
        m = load_map("sdm630")
        self.assertEqual(m.energy_step_wh(meters.IMPORT, 1000), 1)
        self.assertEqual(m.energy_step_wh(meters.IMPORT, 16384000), 2)
        self.assertEqual(m.energy_step_wh(meters.IMPORT, 40000000), 4)


class TestMaps(unittest.TestCase):
    def test_every_builtin_map_decodes_the_sample(self):
        for name in BUILTIN_NAMES:
            m = load_map(name)
            self.assertEqual(decode_all(m, SAMPLE), expected(m, SAMPLE), name)

    def test_negative_power_decodes(self):
        values = list(SAMPLE)
        values[meters.POWER] = -3500
        for name in BUILTIN_NAMES:
            m = load_map(name)
            self.assertEqual(decode_all(m, values)[meters.POWER], -3500, name)

    def test_every_builtin_name_has_one_map(self):
        names = []
        for row in meters.MAPS:
            names.extend(row[0])
        self.assertEqual(sorted(names), sorted(BUILTIN_NAMES))
        self.assertIsNone(meters.map_spec("custom"))
        self.assertEqual(meters.map_spec("sdm120"), meters.map_spec("sdm230"))
        self.assertEqual(load_map("sdm230").name, "sdm230")

    def test_map_spec_is_a_fresh_dict(self):
        spec = meters.map_spec("em340")
        spec["max_regs"] = 4
        self.assertEqual(meters.map_spec("em340")["max_regs"], 50)
        self.assertEqual(load_map("em340").max_regs, 50)

    def test_encodings_by_name(self):
        self.assertEqual(meters.encoding("u64"), (meters.ENC_U64, 4))
        self.assertEqual(meters.encoding("f32_cdab"), (meters.ENC_F32_CDAB, 2))
        self.assertIsNone(meters.encoding("f64"))

    def test_register_layout_per_sheet(self):
        # First register of each quantity, as the vendors' sheets give them.
        sheet = {
            "sdm630": (4, 0x00, 0x06, 0x34, 0x48, 0x4A),
            "sdm120": (4, 0x00, 0x06, 0x0C, 0x48, 0x4A),
            "sdm230": (4, 0x00, 0x06, 0x0C, 0x48, 0x4A),
            "abb_b23": (3, 0x5B00, 0x5B0C, 0x5B14, 0x5000, 0x5004),
            "em340": (4, 0x00, 0x0C, 0x28, 0x34, 0x4E),
            "eem350": (4, 0x00, 0x0C, 0x28, 0x3E, None),
            "orno_we516": (3, 0x0E, 0x16, 0x1C, 0x0108, 0x0110),
        }
        for name, (fc, v, i, p, e_in, e_out) in sheet.items():
            m = load_map(name)
            self.assertEqual(m.fc, fc)
            first = {}
            for addr, _w, q, _c, _m, _d in m.items:
                first[q] = addr
            self.assertEqual(first[meters.V_L1], v, name)
            self.assertEqual(first[meters.I_L1], i, name)
            self.assertEqual(first[meters.POWER], p, name)
            self.assertEqual(first[meters.IMPORT], e_in, name)
            self.assertEqual(first.get(meters.EXPORT), e_out, name)
            if m.phases == 3:
                self.assertEqual(first[meters.V_L2], v + 2, name)
                self.assertEqual(first[meters.I_L3], i + 4, name)

    def test_sdm630_raw_bytes(self):
        # 230.0 V on L1 is 43 66 00 00 at register 0.
        m = load_map("sdm630")
        regs = m.encode([2300, 0, 0, 0, 0, 0, 0, 0, 0])
        self.assertEqual((regs[0], regs[1]), (0x4366, 0x0000))

    def test_em340_is_word_swapped(self):
        m = load_map("em340")
        regs = m.encode([2301, 0, 0, 0, 0, 0, 0, 0, 0])
        self.assertEqual((regs[0], regs[1]), (2301, 0))   # low word first


class TestPollPlan(unittest.TestCase):
    def test_requests_and_bytes_per_map(self):
        # (requests, bytes per poll, protocol minimum): request 8 bytes + reply 5 + 2 per
        # register; a gap is read through only where that is cheaper than another request.
        want = {
            "sdm630": ([(0x00, 12), (0x34, 2), (0x48, 4)], 75, 75),
            "sdm120": ([(0x00, 14), (0x48, 4)], 62, 62),
            "sdm230": ([(0x00, 14), (0x48, 4)], 62, 62),
            "abb_b23": ([(0x5000, 8), (0x5B00, 22)], 86, 86),
            "em340": ([(0x00, 18), (0x28, 2), (0x34, 2), (0x4E, 2)], 100, 100),
            "eem350": ([(0x00, 18), (0x28, 2), (0x3E, 2)], 83, 83),
            "orno_we516": ([(0x0E, 16), (0x0108, 10)], 78, 78),
        }
        for name, (plan, plan_bytes, min_bytes) in want.items():
            m = load_map(name)
            self.assertEqual([(s, c) for s, c, _a, _b in m.plan], plan, name)
            self.assertEqual(m.plan_bytes(), plan_bytes, name)
            self.assertEqual(m.min_bytes(), min_bytes, name)

    def test_a_small_gap_is_read_through_a_large_one_is_not(self):
        # A 4-register gap costs 8 bytes, a second request 13: read through it. A 7-register
        # gap costs 14: split.
        spec = {"fc": 4, "max_regs": 80, "max_gap": 80, "phases": 1,
                "voltage": [0, "f32", 10, 1], "current": [6, "f32", 1000, 1],
                "power": [12, "f32", 1, 1], "import": [21, "f32", 1000, 1]}
        m = meters.MeterMap("gaps", spec)
        self.assertEqual([(s, c) for s, c, _a, _b in m.plan], [(0, 14), (21, 2)])
        self.assertEqual(m.plan_bytes(), 13 + 28 + 13 + 4)

    def test_the_meter_limits_bind_the_plan_not_the_minimum(self):
        spec = meters.map_spec("abb_b23")
        spec["max_regs"] = 10
        m = meters.MeterMap("small", spec)
        self.assertTrue(len(m.plan) > 2)
        self.assertTrue(m.plan_bytes() > m.min_bytes())
        self.assertEqual(m.min_bytes(), load_map("abb_b23").min_bytes())

    def test_every_item_lies_in_exactly_one_request(self):
        for name in BUILTIN_NAMES:
            m = load_map(name)
            for addr, w, _q, _c, _m, _d in m.items:
                inside = [1 for s, c, _a, _b in m.plan if s <= addr and addr + w <= s + c]
                self.assertEqual(len(inside), 1, name)
            for s, c, _a, _b in m.plan:
                self.assertTrue(c <= m.max_regs)

    def test_gaps_are_bridged_only_when_the_map_allows(self):
        spec = meters.map_spec("sdm630")
        spec["max_gap"] = 0
        m = meters.MeterMap("strict", spec)
        self.assertEqual([(s, c) for s, c, _a, _b in m.plan],
                         [(0x00, 12), (0x34, 2), (0x48, 4)])
        self.assertEqual(m.plan_bytes(), 3 * 13 + 2 * 18)

    def test_request_size_limit_splits(self):
        spec = meters.map_spec("sdm630")
        spec["max_regs"] = 10
        m = meters.MeterMap("small", spec)
        for s, c, _a, _b in m.plan:
            self.assertTrue(c <= 10)
        self.assertEqual(decode_all(m, SAMPLE), SAMPLE)


class TestCustomMap(unittest.TestCase):
    GOOD = {"fc": 4, "max_regs": 40, "max_gap": 0, "phases": 3,
            "voltage": [0, "f32", 10, 1], "current": [6, "f32", 1000, 1],
            "power": [12, "i32_cdab", 1, 10], "import": [20, "u32", 1, 1]}

    def custom(self, **change):
        spec = dict(self.GOOD)
        for k, v in change.items():
            if v is None:
                del spec[k]
            else:
                spec[k] = v
        return load_map("custom", json.dumps(spec))

    def test_good_custom_map(self):
        m = self.custom()
        self.assertEqual(m.name, "custom")
        self.assertFalse(m.has_export)
        self.assertEqual(decode_all(m, SAMPLE), expected(m, SAMPLE))

    def assertMapError(self, text, **change):
        try:
            self.custom(**change)
        except MeterMapError as e:
            self.assertTrue(text in str(e), str(e))
            return
        raise AssertionError("accepted a bad map: %s" % change)

    def test_bad_custom_maps_say_why(self):
        self.assertMapError("'fc' must be 3", fc=6)
        self.assertMapError("'max_regs' must be", max_regs=200)
        self.assertMapError("'phases' must be 1 or 3", phases=2)
        self.assertMapError("'import' is required", **{"import": None})
        self.assertMapError("encoding 'f64' unknown", voltage=[0, "f64", 10, 1])
        self.assertMapError("'voltage' must be [address", voltage=[0, "f32"])
        self.assertMapError("address must be an integer", current=[70000, "f32", 1000, 1])
        self.assertMapError("address must be an integer", current=[True, "f32", 1000, 1])
        self.assertMapError("mul and div", power=[12, "i32", 0, 1])
        self.assertMapError("overlap", power=[4, "f32", 1, 1])
        self.assertMapError("unknown key 'colour'", colour="red")
        # JSON 4.0 equals 4 but cannot go into a request frame: the meter would fail at
        # every poll after the config change was accepted.
        self.assertMapError("'fc' must be 3", fc=4.0)
        self.assertMapError("'fc' must be 3", fc=True)
        # An unhashable encoding is a map error, not a TypeError out of the validation.
        self.assertMapError("encoding", voltage=[0, ["f32"], 10, 1])
        self.assertMapError("encoding", voltage=[0, {"f32": 1}, 10, 1])

    def test_a_serial_number_register(self):
        self.assertIsNone(self.custom().serial)
        m = self.custom(serial=[0xFC00, "u32", 3])
        self.assertEqual(m.serial, (3, 0xFC00, meters.ENC_U32, 2))
        regs = m.encode_serial(3000000123)          # above 2**31: still read as unsigned
        buf = bytearray([regs[0xFC00] >> 8, regs[0xFC00] & 0xFF,
                         regs[0xFC01] >> 8, regs[0xFC01] & 0xFF])
        self.assertEqual(m.decode_serial(buf, 0), 3000000123)
        self.assertEqual(load_map("sdm630").serial[:2], (3, 0xFC00))
        self.assertEqual(load_map("abb_b23").serial[:2], (3, 0x8900))
        self.assertIsNone(load_map("em340").serial)

    def test_bad_serial_registers_say_why(self):
        self.assertMapError("'serial' must be [address", serial=[0xFC00, "u32"])
        self.assertMapError("'serial' encoding", serial=[0xFC00, "f32", 3])
        self.assertMapError("'serial' encoding", serial=[0xFC00, ["u32"], 3])
        self.assertMapError("'serial' fc", serial=[0xFC00, "u32", 6])
        self.assertMapError("'serial' address", serial=[-1, "u32", 3])
        self.assertMapError("'serial' runs past", serial=[0xFFFF, "u32", 3])

    def test_not_json_and_empty(self):
        self.assertRaises(MeterMapError, load_map, "custom", "{fc: 4")
        self.assertRaises(MeterMapError, load_map, "custom", "")
        self.assertRaises(MeterMapError, load_map, "custom", "[1, 2]")
        self.assertRaises(ValueError, load_map, "sdm999")

    def test_config_accepts_only_known_map_names(self):
        from firmware.config import Config, ConfigError
        cfg = Config()
        self.assertRaises(ConfigError, cfg.set, "meter_map", "sdm999")
        cfg.set("meter_map", "em340")
        self.assertEqual(cfg["meter_map"], "em340")


if __name__ == "__main__":
    unittest.main()
