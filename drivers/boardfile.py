"""The board file: which GPIO does what on this PCB, and how its front ends scale.

A board is data (/board.json on the device), so another PCB needs a new file, not new code.
`load()` reads and `validate()` checks it in full before anything drives a pin, and a bad
file raises BoardFileError naming the field and the reason. The format is documented field
by field in docs/board.md; the schema below is the single source of the defaults.

ESP32 rules enforced here (the port would fail later, or worse, silently):
- analogue inputs (pilot, PP, NTC) must be on ADC1, GPIO 32-39: ADC2 is unusable while
  Wi-Fi runs;
- GPIO 34-39 are input-only and have no internal pull resistors;
- GPIO 6-11 drive the SPI flash;
- GPIO 1 and 3 are UART0: the boot log and the REPL toggle them at every reset;
- no GPIO may serve two functions.

`null` stands for "no such part" only: an optional section, or a field whose default is
none (an absent pin). For a field with a default, `null` is an error, not the default: a
coil polarity of `null` is a board file nobody finished, and boot.py drives the contactor
from this validation alone (it leaves the pin alone when the file fails it).
"""
import json

# ESP32 (WROOM/WROVER) GPIOs the MicroPython port accepts.
VALID_PINS = tuple(list(range(0, 20)) + [21, 22, 23, 25, 26, 27] + list(range(32, 40)))
FLASH_PINS = (6, 7, 8, 9, 10, 11)
# UART0: the ROM boot log and the REPL run on these at every reset.
REPL_PINS = {1: "UART0 TX", 3: "UART0 RX"}
INPUT_ONLY_PINS = (34, 35, 36, 37, 38, 39)
ADC1_PINS = (32, 33, 34, 35, 36, 37, 38, 39)
ADC2_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27)

PULLS = ("up", "down", "none")

REQUIRED = "required"

# Field kinds: "out" output pin, "in" input pin, "adc" ADC1 input pin, "int", "bool",
# "pull", "str". Spec: (kind, default-or-REQUIRED[, low, high]); None = absent/optional.
_TOP = {
    "name": ("str", "unnamed", 1, 32),
    "watchdog_ms": ("int", 8000, 1000, 60000),
    # The current the hardware is rated for, in mA: the lowest of supply, contactor,
    # wiring and (on a tethered station) the cable. Nothing offers more, whatever
    # max_current_ma, the backend or a technician says (docs/board.md).
    "rated_current_ma": ("int", 32000, 6000, 80000),
}

SECTIONS = {
    # name: (required section, fields)
    "pilot": (True, {
        "pwm_pin": ("out", REQUIRED),
        # True when the output stage inverts (pin high -> CP -12 V).
        "pwm_inverted": ("bool", False),
        "adc_pin": ("adc", REQUIRED),
        # Two-point calibration of the sense divider: ADC millivolts at CP 0 V and +12 V.
        "adc_mv_at_0v": ("int", 1300, 0, 3300),
        "adc_mv_at_12v": ("int", 2500, 0, 3300),
        # Below this the ADC is non-linear: such readings only say "below -6 V".
        "adc_min_mv": ("int", 150, 0, 1000),
        # Burst: sample for at least this long (two PWM periods by default) ...
        "burst_us": ("int", 2100, 1000, 5000),
        # ... but never more conversions than this.
        "burst_max_samples": ("int", 200, 16, 1000),
    }),
    "pp": (True, {
        "adc_pin": ("adc", None),
        # PP pulled up to pullup_mv through pullup_ohms; the cable's Rc pulls it to PE.
        "pullup_ohms": ("int", 1000, 100, 100000),
        "pullup_mv": ("int", 3300, 1000, 5000),
        # Readings at or above this are an open PP (no cable) or a saturated ADC.
        "open_mv": ("int", 3000, 500, 3300),
        # Tethered cable without a PP sense circuit: the cable's coding resistor value.
        "fixed_ohms": ("int", None, 1, 100000),
    }),
    "contactor": (True, {
        "pin": ("out", REQUIRED),
        "active_high": ("bool", True),
        "mirror_pin": ("in", None),
        # Level of the mirror input when the main contacts are closed.
        "mirror_closed_high": ("bool", False),
        "mirror_pull": ("pull", "none"),
    }),
    "rcd": (False, {
        "fault_pin": ("in", REQUIRED),
        "fault_high": ("bool", True),
        "fault_pull": ("pull", "none"),
        "test_pin": ("out", None),
        "test_active_high": ("bool", True),
    }),
    "lock": (False, {
        "lock_pin": ("out", REQUIRED),
        "unlock_pin": ("out", REQUIRED),
        "motor_active_high": ("bool", True),
        "feedback_pin": ("in", REQUIRED),
        "feedback_locked_high": ("bool", False),
        "feedback_pull": ("pull", "up"),
        "pulse_ms": ("int", 400, 300, 600),
        "retries": ("int", 2, 0, 5),
        "retry_pause_ms": ("int", 500, 100, 5000),
        "timer_id": ("int", 0, 0, 3),
    }),
    "temperature": (False, {
        "adc_pin": ("adc", REQUIRED),
        "fixed_ohms": ("int", 10000, 100, 1000000),
        "ref_mv": ("int", 3300, 1000, 5000),
        "ntc_r25_ohms": ("int", 10000, 100, 1000000),
        "ntc_beta": ("int", 3950, 1000, 10000),
        # True: NTC from the ADC node to GND, fixed resistor to ref_mv.
        "ntc_low_side": ("bool", True),
        # Readings at or above this are an open sensor (or a saturated ADC).
        "open_mv": ("int", 3050, 500, 3300),
    }),
    "led": (False, {
        "red_pin": ("out", None),
        "green_pin": ("out", None),
        "blue_pin": ("out", None),
        "active_high": ("bool", True),
    }),
    "rs485": (False, {
        "uart_id": ("int", 2, 1, 2),
        "tx_pin": ("out", REQUIRED),
        "rx_pin": ("in", REQUIRED),
        "de_pin": ("out", REQUIRED),
        "de_active_high": ("bool", True),
        # ESP-IDF wants more than the 128-byte hardware FIFO (uart_driver_install).
        "rxbuf": ("int", 256, 129, 4096),
    }),
    "service": (False, {
        "pin": ("in", None),
        "active_high": ("bool", False),
        "pull": ("pull", "up"),
        "flag_file": ("str", "service", 1, 32),
    }),
}


class BoardFileError(ValueError):
    pass


def _is_int(v):
    # isinstance(True, int) differs between CPython and MicroPython: exclude bools explicitly.
    return isinstance(v, int) and v is not True and v is not False


def _check_field(where, kind, value, spec):
    if kind in ("out", "in", "adc"):
        if not _is_int(value):
            raise BoardFileError("%s: expected a GPIO number" % where)
        if value not in VALID_PINS:
            raise BoardFileError("%s: GPIO %d does not exist on the ESP32" % (where, value))
        if value in FLASH_PINS:
            raise BoardFileError("%s: GPIO %d drives the SPI flash" % (where, value))
        if value in REPL_PINS:
            raise BoardFileError("%s: GPIO %d is %s (the boot log and the REPL)"
                                 % (where, value, REPL_PINS[value]))
        if kind == "out" and value in INPUT_ONLY_PINS:
            raise BoardFileError("%s: GPIO %d is input-only (GPIO 34-39 cannot drive)"
                                 % (where, value))
        if kind == "adc" and value not in ADC1_PINS:
            if value in ADC2_PINS:
                raise BoardFileError("%s: GPIO %d is on ADC2, which is unusable while Wi-Fi"
                                     " runs; use an ADC1 pin (GPIO 32-39)" % (where, value))
            raise BoardFileError("%s: GPIO %d has no ADC; use GPIO 32-39" % (where, value))
        return value
    if kind == "int":
        if not _is_int(value):
            raise BoardFileError("%s: expected an integer" % where)
        if value < spec[2] or value > spec[3]:
            raise BoardFileError("%s: %d out of range %d..%d" % (where, value, spec[2], spec[3]))
        return value
    if kind == "bool":
        if value is not True and value is not False:
            raise BoardFileError("%s: expected true or false" % where)
        return value
    if kind == "pull":
        if value not in PULLS:
            raise BoardFileError("%s: expected one of %s" % (where, ", ".join(PULLS)))
        return value
    if not isinstance(value, str):
        raise BoardFileError("%s: expected a string" % where)
    if not spec[2] <= len(value) <= spec[3]:
        raise BoardFileError("%s: length must be %d..%d" % (where, spec[2], spec[3]))
    return value


def _section(name, fields, raw):
    if not isinstance(raw, dict):
        raise BoardFileError("%s: expected an object" % name)
    for key in raw:
        if key not in fields:
            raise BoardFileError("%s.%s: unknown field" % (name, key))
    out = {}
    for key in fields:
        spec = fields[key]
        where = "%s.%s" % (name, key)
        if key not in raw:
            if spec[1] == REQUIRED:
                raise BoardFileError("%s: required" % where)
            out[key] = spec[1]
            continue
        value = raw[key]
        if value is None:
            if spec[1] == REQUIRED:
                raise BoardFileError("%s: required" % where)
            if spec[1] is not None:
                raise BoardFileError("%s: null is not a value; leave the field out for its"
                                     " default (%s)" % (where, json.dumps(spec[1])))
            out[key] = None
        else:
            out[key] = _check_field(where, spec[0], value, spec)
    return out


def _check_relations(b):
    pilot = b["pilot"]
    if abs(pilot["adc_mv_at_12v"] - pilot["adc_mv_at_0v"]) < 200:
        raise BoardFileError("pilot: adc_mv_at_0v and adc_mv_at_12v must differ by at least"
                             " 200 mV")
    pp = b["pp"]
    if (pp["adc_pin"] is None) == (pp["fixed_ohms"] is None):
        raise BoardFileError("pp: give exactly one of adc_pin (sensed) or fixed_ohms"
                             " (tethered cable)")
    if pp["adc_pin"] is not None and pp["open_mv"] >= pp["pullup_mv"]:
        raise BoardFileError("pp.open_mv: must be below pullup_mv")
    led = b["led"]
    if led is not None and led["red_pin"] is None and led["green_pin"] is None \
            and led["blue_pin"] is None:
        raise BoardFileError("led: needs at least one of red_pin, green_pin, blue_pin")
    # Pull resistors: GPIO 34-39 have none, so the input would float.
    for name, pin_key, pull_key in (("contactor", "mirror_pin", "mirror_pull"),
                                    ("rcd", "fault_pin", "fault_pull"),
                                    ("lock", "feedback_pin", "feedback_pull"),
                                    ("service", "pin", "pull")):
        sec = b[name]
        if sec is not None and sec[pin_key] in INPUT_ONLY_PINS and sec[pull_key] != "none":
            raise BoardFileError("%s.%s: GPIO %d has no internal pull resistor; fit an"
                                 " external one and set %s to \"none\""
                                 % (name, pull_key, sec[pin_key], pull_key))
    used = {}
    for name in SECTIONS:
        sec = b[name]
        if sec is None:
            continue
        fields = SECTIONS[name][1]
        for key in fields:
            if fields[key][0] in ("out", "in", "adc") and sec[key] is not None:
                where = "%s.%s" % (name, key)
                other = used.get(sec[key])
                if other is not None:
                    raise BoardFileError("%s: GPIO %d is already used by %s"
                                         % (where, sec[key], other))
                used[sec[key]] = where


def validate(raw):
    """Return the board as a complete dict (defaults filled in, absent optional sections
    None), or raise BoardFileError with the field and the reason."""
    if not isinstance(raw, dict):
        raise BoardFileError("board file: expected a JSON object")
    for key in raw:
        if key not in _TOP and key not in SECTIONS:
            raise BoardFileError("%s: unknown field" % key)
    board = {}
    for key in _TOP:
        spec = _TOP[key]
        if key not in raw:
            board[key] = spec[1]
        elif raw[key] is None:
            raise BoardFileError("%s: null is not a value; leave the field out for its"
                                 " default (%s)" % (key, json.dumps(spec[1])))
        else:
            board[key] = _check_field(key, spec[0], raw[key], spec)
    for name in SECTIONS:
        required, fields = SECTIONS[name]
        value = raw.get(name)
        if value is None:
            if required:
                raise BoardFileError("%s: required section missing" % name)
            board[name] = None
        else:
            board[name] = _section(name, fields, value)
    _check_relations(board)
    return board


def loads(text):
    """`text`: str, or bytes as read from flash (which must be UTF-8)."""
    if not isinstance(text, str):
        try:
            text = bytes(text).decode()
        except (UnicodeError, TypeError, ValueError):
            raise BoardFileError("board file: not UTF-8 text")
    try:
        raw = json.loads(text)
    except ValueError:
        raise BoardFileError("board file: not valid JSON")
    except (RuntimeError, MemoryError):   # CPython's RecursionError is a RuntimeError
        raise BoardFileError("board file: too large or nested too deeply for the free heap")
    return validate(raw)


def load(path="/board.json"):
    """The validated board from `path`. Every way the file can be bad (missing, unreadable,
    not UTF-8, not JSON, not an object, a bad field) raises BoardFileError: never another
    exception, so a damaged file cannot send main.py into a crash-and-reset loop."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise BoardFileError("board file: cannot read %s" % path)
    except MemoryError:
        raise BoardFileError("board file: %s does not fit the free heap" % path)
    return loads(data)
