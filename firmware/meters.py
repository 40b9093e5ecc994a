"""Energy-meter register maps as data, their codec, and the poll plan.

A map says, per quantity, where the register is, how it is encoded and how to scale it to
the integer unit the firmware uses (voltage in dV, current in mA, power in W, energy in Wh):

    quantity: (first register, encoding, mul, div)      value = raw * mul / div, rounded

Voltage and current give L1; L2 and L3 follow one value further each (+2 registers for the
32-bit encodings of every built-in map, +1 for a 16-bit encoding in a custom map),
as on every supported meter's sheet. The map also says which function code reads it, how
many registers one request may carry (`max_regs`) and how many unused registers the meter
lets a request read through (`max_gap`, 0 = never bridge a gap). Those two numbers drive the
poll plan: as few requests as the meter allows, each value from one reply.

Float registers are decoded from their IEEE-754 bits with integer arithmetic, so the result
is exact and the same on CPython and on the ESP32 (whose floats are 32-bit and allocate).
The register itself is still a float32: a kWh value keeps 1 Wh resolution only below
2**14 = 16384 kWh; above that the meter's own value steps by 2 Wh (4 Wh above 32768 kWh).

Maps marked (uncertain) in docs/meters.md have limits not confirmed against the vendor's
sheet; a custom map (config `meter_map` = "custom", `meter_custom_map` = JSON of the same
shape) overrides everything.
"""
import json

from firmware.compat import const, small_int

# Quantity indexes into a reading.
V_L1 = const(0)
V_L2 = const(1)
V_L3 = const(2)
I_L1 = const(3)
I_L2 = const(4)
I_L3 = const(5)
POWER = const(6)
IMPORT = const(7)
EXPORT = const(8)
N_QUANTITIES = const(9)

QUANTITY_NAMES = ("voltage_l1_dv", "voltage_l2_dv", "voltage_l3_dv",
                  "current_l1_ma", "current_l2_ma", "current_l3_ma",
                  "power_w", "import_wh", "export_wh")

# Encodings: (name, code, registers). ABCD = high word first (big-endian throughout);
# CDAB = low word first ("word swapped"), bytes within a word always big-endian.
ENC_U16 = const(0)
ENC_I16 = const(1)
ENC_U32 = const(2)
ENC_U32_CDAB = const(3)
ENC_I32 = const(4)
ENC_I32_CDAB = const(5)
ENC_F32 = const(6)
ENC_F32_CDAB = const(7)
ENC_U64 = const(8)

ENCODINGS = (
    ("u16", ENC_U16, 1),
    ("i16", ENC_I16, 1),
    ("u32", ENC_U32, 2),
    ("u32_cdab", ENC_U32_CDAB, 2),
    ("i32", ENC_I32, 2),
    ("i32_cdab", ENC_I32_CDAB, 2),
    ("f32", ENC_F32, 2),
    ("f32_cdab", ENC_F32_CDAB, 2),
    ("u64", ENC_U64, 4),
)
_FLOATS = (ENC_F32, ENC_F32_CDAB)

# Fields of a map: the per-phase ones expand to L1..L3.
_FIELDS = ("voltage", "current", "power", "import", "export")
_REQUIRED = ("voltage", "current", "power", "import")
_KEYS = ("fc", "max_regs", "max_gap", "phases", "serial") + _FIELDS
# Encodings a serial-number register may have (an integer, not a measured value).
_SERIAL_ENCODINGS = ("u16", "u32", "u32_cdab", "u64")
_FIELD_QUANTITY = (V_L1, I_L1, POWER, IMPORT, EXPORT)     # per entry of _FIELDS

# The built-in maps: (names, spec), the spec as (key, value) pairs of the custom map's JSON
# object. Constant tuples throughout, so a frozen image keeps them in flash (no RAM);
# load_map() turns the one the station uses into a MeterMap. (Addresses above 8191 are
# long ints in flash: only load_map's validation reads them, and MeterMap's items are
# computed, small ints.)
MAPS = (
    # Eastron SDM: input registers, float32 ABCD in V, A, W, kWh. "At most 80 registers per
    # request"; the whole 0x00..0x4F block may be read in one go. The serial number is
    # holding register 0xFC00 (u32, FC03) on the SDM120/230/630.
    (("sdm630",),
     (("fc", 4), ("max_regs", 80), ("max_gap", 80), ("phases", 3),
      ("serial", (0xFC00, "u32", 3)),
      ("voltage", (0x00, "f32", 10, 1)), ("current", (0x06, "f32", 1000, 1)),
      ("power", (0x34, "f32", 1, 1)),
      ("import", (0x48, "f32", 1000, 1)), ("export", (0x4A, "f32", 1000, 1)))),
    (("sdm120", "sdm230"),
     (("fc", 4), ("max_regs", 80), ("max_gap", 80), ("phases", 1),
      ("serial", (0xFC00, "u32", 3)),
      ("voltage", (0x00, "f32", 10, 1)), ("current", (0x06, "f32", 1000, 1)),
      ("power", (0x0C, "f32", 1, 1)),
      ("import", (0x48, "f32", 1000, 1)), ("export", (0x4A, "f32", 1000, 1)))),
    # ABB B23: holding registers; V x0.1, A x0.01, W x0.01, energy u64 in 0.01 kWh.
    # 125 registers per request; gaps inside one block are readable (uncertain). Serial
    # number: u32 at 0x8900 (uncertain).
    (("abb_b23",),
     (("fc", 3), ("max_regs", 125), ("max_gap", 16), ("phases", 3),
      ("serial", (0x8900, "u32", 3)),
      ("voltage", (0x5B00, "u32", 1, 1)), ("current", (0x5B0C, "u32", 10, 1)),
      ("power", (0x5B14, "i32", 1, 100)),
      ("import", (0x5000, "u64", 10, 1)), ("export", (0x5004, "u64", 10, 1)))),
    # Carlo Gavazzi EM340: input registers, int32 low word first; 0.1 V, mA, 0.1 W,
    # 0.1 kWh. Request size limit (uncertain): 50.
    (("em340",),
     (("fc", 4), ("max_regs", 50), ("max_gap", 50), ("phases", 3),
      ("voltage", (0x00, "i32_cdab", 1, 1)), ("current", (0x0C, "i32_cdab", 1, 1)),
      ("power", (0x28, "i32_cdab", 1, 10)),
      ("import", (0x34, "i32_cdab", 100, 1)), ("export", (0x4E, "i32_cdab", 100, 1)))),
    # Phoenix Contact EEM-350-D-MCB: as the EM340, no export register (uncertain limits).
    (("eem350",),
     (("fc", 4), ("max_regs", 50), ("max_gap", 50), ("phases", 3),
      ("voltage", (0x00, "i32_cdab", 1, 1)), ("current", (0x0C, "i32_cdab", 1, 1)),
      ("power", (0x28, "i32_cdab", 1, 10)),
      ("import", (0x3E, "i32_cdab", 100, 1)))),
    # ORNO WE-516/517: holding registers, float32 ABCD; power in kW (uncertain limits).
    (("orno_we516",),
     (("fc", 3), ("max_regs", 40), ("max_gap", 8), ("phases", 3),
      ("voltage", (0x0E, "f32", 10, 1)), ("current", (0x16, "f32", 1000, 1)),
      ("power", (0x1C, "f32", 1000, 1)),
      ("import", (0x0108, "f32", 1000, 1)), ("export", (0x0110, "f32", 1000, 1)))),
)

BUILTIN_NAMES = ("sdm630", "sdm120", "sdm230", "abb_b23", "em340", "eem350", "orno_we516")

# Bytes on the wire for one read: request is always 8; reply is 5 + 2 per register.
REQUEST_BYTES = const(8)
REPLY_OVERHEAD_BYTES = const(5)


_MODBUS_MAX_REGS = const(125)     # FC03/FC04: at most 125 registers per reply


def _plan_cost(plan):
    return sum(REQUEST_BYTES + REPLY_OVERHEAD_BYTES + 2 * c for _s, c, _a, _b in plan)


def _cover(items, max_gap, max_regs):
    """The cover of the sorted registers by contiguous reads with the fewest bytes on the
    wire: a request costs its frame overhead (13 bytes) plus 2 per register read, so a gap is
    bridged only where reading through it is cheaper than a second request, and only where
    the meter allows it (every swallowed gap <= max_gap, every request <= max_regs).
    Exact, by dynamic programming over the split points (a map has a dozen items).
    Each entry: (start, count, first item, end item)."""
    n = len(items)
    best = [0] + [None] * n       # best[j]: bytes to read items[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        end = items[j - 1][0] + items[j - 1][1]
        for i in range(j - 1, -1, -1):
            if i < j - 1 and items[i + 1][0] - (items[i][0] + items[i][1]) > max_gap:
                break
            count = end - items[i][0]
            if count > max_regs:
                break
            cost = best[i] + REQUEST_BYTES + REPLY_OVERHEAD_BYTES + 2 * count
            if best[j] is None or cost < best[j]:
                best[j] = cost
                cut[j] = i
    plan = []
    j = n
    while j > 0:
        i = cut[j]
        start = items[i][0]
        plan.append((start, items[j - 1][0] + items[j - 1][1] - start, i, j))
        j = i
    plan.reverse()
    return plan


class MeterMapError(ValueError):
    pass


def encoding(name):
    """(code, registers) of the encoding called `name`; None when there is none."""
    for enc in ENCODINGS:
        if enc[0] == name:
            return enc[1], enc[2]
    return None


def map_spec(name):
    """The built-in map `name` as a dict of the custom map's shape (a new dict, the
    caller's to change); None for an unknown name."""
    for row in MAPS:
        if name in row[0]:
            return dict(row[1])
    return None


def _err(msg):
    return MeterMapError("meter map: " + msg)


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _field(name, spec):
    if not isinstance(spec, (list, tuple)) or len(spec) != 4:
        raise _err("'%s' must be [address, encoding, mul, div]" % name)
    addr, enc, mul, div = spec
    if not _is_int(addr) or addr < 0 or addr > 0xFFFF:
        raise _err("'%s' address must be an integer 0..65535" % name)
    coding = encoding(enc) if isinstance(enc, str) else None
    if coding is None:
        raise _err("'%s' encoding '%s' unknown (one of %s)"
                   % (name, enc, ", ".join(e[0] for e in ENCODINGS)))
    if not _is_int(mul) or not _is_int(div) or mul < 1 or div < 1 \
            or mul > 1000000 or div > 1000000:
        raise _err("'%s' mul and div must be integers 1..1000000" % name)
    return addr, coding[0], coding[1], mul, div


def _limit(spec, key, low, high):
    value = spec.get(key)
    if not _is_int(value) or value < low or value > high:
        raise _err("'%s' must be an integer %d..%d" % (key, low, high))
    return value


def _serial(spec):
    # [address, encoding, fc]: read on its own request (it usually sits far from the
    # measured values, often under another function code).
    if spec is None:
        return None
    if not isinstance(spec, (list, tuple)) or len(spec) != 3:
        raise _err("'serial' must be [address, encoding, fc]")
    addr, enc, fc = spec
    if not _is_int(addr) or addr < 0 or addr > 0xFFFF:
        raise _err("'serial' address must be an integer 0..65535")
    if enc not in _SERIAL_ENCODINGS:
        raise _err("'serial' encoding must be one of %s" % ", ".join(_SERIAL_ENCODINGS))
    if not _is_int(fc) or (fc != 3 and fc != 4):
        raise _err("'serial' fc must be 3 or 4")
    code, width = encoding(enc)
    if addr + width > 0x10000:
        raise _err("'serial' runs past register 65535")
    # Frozen, a built-in map's address over 8191 is a long int in flash: one that is
    # computed with on every serial read must be a small int (compat.small_int).
    return fc, small_int(addr), code, width


class MeterMap:
    """A validated map plus its poll plan. Build with load_map()."""

    def __init__(self, name, spec):
        if not isinstance(spec, dict):
            raise _err("expected a JSON object")
        for key in spec:
            if key not in _KEYS:
                raise _err("unknown key '%s' (allowed: %s)" % (key, ", ".join(_KEYS)))
        for key in _REQUIRED:
            if key not in spec:
                raise _err("'%s' is required" % key)
        self.name = name
        fc = spec.get("fc")
        if not _is_int(fc) or (fc != 3 and fc != 4):
            raise _err("'fc' must be 3 (holding) or 4 (input registers)")
        self.fc = fc
        self.max_regs = _limit(spec, "max_regs", 4, 125)
        self.max_gap = _limit(spec, "max_gap", 0, 125)
        self.phases = _limit(spec, "phases", 1, 3)
        if self.phases == 2:
            raise _err("'phases' must be 1 or 3")
        items = []
        for f in range(len(_FIELDS)):
            fname = _FIELDS[f]
            if fname not in spec:
                continue
            addr, code, width, mul, div = _field(fname, spec[fname])
            q = _FIELD_QUANTITY[f]
            n = self.phases if fname in ("voltage", "current") else 1
            for k in range(n):
                # L2, L3 one value further each, per the meters' sheets.
                a = addr + k * width
                if a + width > 0x10000:
                    raise _err("'%s' runs past register 65535" % fname)
                items.append((a, width, q + k, code, mul, div))
        items.sort()
        for j in range(1, len(items)):
            if items[j][0] < items[j - 1][0] + items[j - 1][1]:
                raise _err("registers of %s and %s overlap"
                           % (QUANTITY_NAMES[items[j - 1][2]], QUANTITY_NAMES[items[j][2]]))
        self.items = items
        self.has_export = "export" in spec
        self.serial = _serial(spec.get("serial"))     # (fc, address, code, width) or None
        self.plan = self._plan()

    def _plan(self):
        return _cover(self.items, self.max_gap, self.max_regs)

    def plan_bytes(self):
        """Bytes on the wire (requests + replies) for one poll with this plan."""
        return _plan_cost(self.plan)

    def min_bytes(self):
        """The protocol's minimum for these registers: the cheapest cover by contiguous
        reads when the meter would allow any gap and the full 125-register request."""
        return _plan_cost(_cover(self.items, _MODBUS_MAX_REGS, _MODBUS_MAX_REGS))

    def decode(self, step, buf, offset, out):
        """Decode the items of plan step `step` from reply data at buf[offset:] into
        `out[quantity]`. Returns the number of values that were not numbers (NaN/Inf or
        out of any sane range), which are left unchanged in `out`."""
        start, _count, first, end = self.plan[step]
        bad = 0
        for j in range(first, end):
            addr, _w, q, code, mul, div = self.items[j]
            v = decode_value(buf, offset + 2 * (addr - start), code, mul, div)
            if v is None:
                bad += 1
            else:
                out[q] = v
        return bad

    def decode_serial(self, buf, offset):
        """The serial number from the reply to the serial request (an int)."""
        return decode_value(buf, offset, self.serial[2], 1, 1)

    def energy_step_wh(self, quantity, value_wh):
        """The smallest change the meter's register can show at `value_wh`, in Wh (used
        to tolerate quantisation in the plausibility checks)."""
        for addr, _w, q, code, mul, div in self.items:
            if q == quantity:
                if code in _FLOATS:
                    # float32 ulp at this magnitude, in register units, scaled to Wh.
                    raw = abs(value_wh) * div // mul
                    e = 0
                    while (1 << (e + 1)) <= raw:
                        e += 1
                    ulp_num = mul << max(e - 23, 0)
                    ulp_den = div << max(23 - e, 0)
                    return ulp_num // ulp_den + 1
                return (mul + div - 1) // div
        return 0

    def encode(self, values):
        """{register: u16} holding `values` (a sequence indexed by quantity, None = skip),
        encoded as this meter would. For simulators and tests; allocates freely."""
        regs = {}
        for addr, width, q, code, mul, div in self.items:
            v = values[q] if q < len(values) else None
            if v is None:
                continue
            words = encode_value(code, v, mul, div)
            for k in range(width):
                regs[addr + k] = words[k]
        return regs

    def encode_serial(self, serial):
        """{register: u16} holding serial number `serial` (simulators and tests)."""
        _fc, addr, code, width = self.serial
        words = encode_value(code, serial, 1, 1)
        return {addr + k: words[k] for k in range(width)}


def _div_round(num, den):
    # Round half away from zero; Python's // floors.
    if num >= 0:
        return (num + den // 2) // den
    return -((-num + den // 2) // den)


def f32_bits_scaled(bits, mul, div):
    """round(float32(bits) * mul / div) in exact integer arithmetic; None for NaN/Inf
    or magnitudes no meter shows (> 2**40 register units)."""
    e = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    if e == 0xFF:
        return None
    if e == 0:
        shift = -149
    else:
        m |= 0x800000
        shift = e - 150
    if m == 0 or shift < -80:
        return 0
    if shift > 16:
        return None
    num = m * mul
    den = div
    if shift >= 0:
        num <<= shift
    else:
        den <<= -shift
    r = (num + den // 2) // den
    return -r if bits & 0x80000000 else r


def decode_value(buf, j, code, mul, div):
    """Decode one value whose first register starts at buf[j]."""
    w0 = (buf[j] << 8) | buf[j + 1]
    if code == ENC_U16:
        return _div_round(w0 * mul, div)
    if code == ENC_I16:
        return _div_round((w0 - 0x10000 if w0 & 0x8000 else w0) * mul, div)
    w1 = (buf[j + 2] << 8) | buf[j + 3]
    if code == ENC_U32_CDAB or code == ENC_I32_CDAB or code == ENC_F32_CDAB:
        w0, w1 = w1, w0
    if code == ENC_F32 or code == ENC_F32_CDAB:
        return f32_bits_scaled((w0 << 16) | w1, mul, div)
    if code == ENC_U64:
        w2 = (buf[j + 4] << 8) | buf[j + 5]
        w3 = (buf[j + 6] << 8) | buf[j + 7]
        return _div_round((((((w0 << 16) | w1) << 16) | w2) << 16 | w3) * mul, div)
    raw = (w0 << 16) | w1
    if (code == ENC_I32 or code == ENC_I32_CDAB) and w0 & 0x8000:
        raw -= 0x100000000
    return _div_round(raw * mul, div)


def encode_value(code, value, mul, div):
    """The register words that decode_value() turns back into `value` (host side)."""
    import struct
    if code == ENC_F32 or code == ENC_F32_CDAB:
        b = struct.pack(">f", value * div / mul)
        words = [(b[0] << 8) | b[1], (b[2] << 8) | b[3]]
    else:
        raw = _div_round(value * div, mul)
        if code == ENC_U64:
            raw &= 0xFFFFFFFFFFFFFFFF
            words = [(raw >> 48) & 0xFFFF, (raw >> 32) & 0xFFFF, (raw >> 16) & 0xFFFF,
                     raw & 0xFFFF]
        elif code == ENC_U16 or code == ENC_I16:
            words = [raw & 0xFFFF]
        else:
            raw &= 0xFFFFFFFF
            words = [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
    if code == ENC_U32_CDAB or code == ENC_I32_CDAB or code == ENC_F32_CDAB:
        words = [words[1], words[0]]
    return words


def load_map(name, custom_json=""):
    """The MeterMap for config `meter_map` (a built-in name, or "custom" with the JSON
    in `meter_custom_map`). Raises MeterMapError with the reason."""
    if name == "custom":
        if not custom_json:
            raise _err("meter_map is 'custom' but meter_custom_map is empty")
        try:
            spec = json.loads(custom_json)
        except ValueError:
            raise _err("meter_custom_map is not valid JSON")
        return MeterMap("custom", spec)
    spec = map_spec(name)
    if spec is None:
        raise _err("unknown meter '%s' (one of %s, custom)" % (name, ", ".join(BUILTIN_NAMES)))
    return MeterMap(name, spec)
