"""The ESP32 implementation of firmware.board.Board, built from a validated board file.

    from drivers.boardfile import load
    board = Esp32Board(load("/board.json"))

Every [tick] method allocates nothing (tests/unit/test_drivers_alloc.py proves it under
micropython.heap_lock() on the unix port): drivers keep bound methods, integers and
preallocated state only.
"""
import machine

from drivers import bootinfo
from drivers import clock as _clock
from drivers.contactor import Contactor
from drivers.led import StatusLed
from drivers.lock import SocketLock
from drivers.pilot import PilotOutput, PilotSampler
from drivers.pp import FixedProximity, ProximityPilot
from drivers.rcd import ResidualCurrentMonitor
from drivers.rs485 import Rs485
from drivers.temperature import NtcThermistor
from firmware import board as _board

_PARITY = {"N": None, "E": 0, "O": 1}

# An RTC before this year has not been set by NTP (it starts at 2000-01-01 on the ESP32).
_RTC_VALID_FROM_YEAR = 2024
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _pull(name):
    if name == "up":
        return machine.Pin.PULL_UP
    if name == "down":
        return machine.Pin.PULL_DOWN
    return None


def _input(pin, pull):
    return machine.Pin(pin, machine.Pin.IN, _pull(pull))


def _output(pin, level):
    # value= first: the pin is never driven to the wrong level, not even for a moment.
    return machine.Pin(pin, machine.Pin.OUT, value=level)


def _adc(pin):
    return machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)


def unix_seconds(year, month, day, hour, minute, second):
    """Seconds since 1970-01-01 UTC for a civil UTC date (no time module epoch involved)."""
    y = year - 1
    days = 365 * (year - 1970) + (y // 4 - y // 100 + y // 400) - (1969 // 4 - 1969 // 100 + 1969 // 400)
    days += _DAYS_BEFORE_MONTH[month - 1] + day - 1
    if month > 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        days += 1
    return days * 86400 + hour * 3600 + minute * 60 + second


class Esp32Board(_board.Board):
    def __init__(self, cfg, clock=None, fs_root="/"):
        self.cfg = cfg
        self.name = cfg["name"]
        self.rated_current_ma = cfg["rated_current_ma"]
        self._clock = clock if clock is not None else _clock.source
        self._fs_root = fs_root
        self.cp_high_mv = 0
        self.cp_low_mv = 0
        self.wifi = None
        clk = self._clock

        # Contactor first: nothing else may run with the coil in an unknown state.
        c = cfg["contactor"]
        coil = _output(c["pin"], 0 if c["active_high"] else 1)
        mirror = None
        if c["mirror_pin"] is not None:
            mirror = _input(c["mirror_pin"], c["mirror_pull"])
        self.contactor = Contactor(coil, c["active_high"], mirror, c["mirror_closed_high"])

        p = cfg["pilot"]
        # Start at steady +12 V (state A offered: no PWM, no current).
        pwm = machine.PWM(machine.Pin(p["pwm_pin"]), freq=1000,
                          duty_u16=0 if p["pwm_inverted"] else 65535)
        self.pilot = PilotOutput(pwm, p["pwm_inverted"])
        self.pilot_sampler = PilotSampler(_adc(p["adc_pin"]), p["adc_mv_at_0v"],
                                          p["adc_mv_at_12v"], p["adc_min_mv"], p["burst_us"],
                                          p["burst_max_samples"], clk)

        pp = cfg["pp"]
        if pp["adc_pin"] is not None:
            self.pp = ProximityPilot(_adc(pp["adc_pin"]), pp["pullup_ohms"], pp["pullup_mv"],
                                     pp["open_mv"])
        else:
            self.pp = FixedProximity(pp["fixed_ohms"])

        r = cfg["rcd"]
        self.rcd = None
        if r is not None:
            test = None
            if r["test_pin"] is not None:
                test = _output(r["test_pin"], 0 if r["test_active_high"] else 1)
            self.rcd = ResidualCurrentMonitor(_input(r["fault_pin"], r["fault_pull"]),
                                              r["fault_high"], test, r["test_active_high"])

        lk = cfg["lock"]
        self.lock = None
        if lk is not None:
            off = 0 if lk["motor_active_high"] else 1
            self.lock = SocketLock(_output(lk["lock_pin"], off), _output(lk["unlock_pin"], off),
                                   _input(lk["feedback_pin"], lk["feedback_pull"]),
                                   machine.Timer(lk["timer_id"]), machine.Timer,
                                   lk["motor_active_high"], lk["feedback_locked_high"],
                                   lk["pulse_ms"], lk["retries"], lk["retry_pause_ms"])

        t = cfg["temperature"]
        self.thermistor = None
        if t is not None:
            self.thermistor = NtcThermistor(_adc(t["adc_pin"]), t["fixed_ohms"], t["ref_mv"],
                                            t["ntc_r25_ohms"], t["ntc_beta"], t["ntc_low_side"],
                                            t["open_mv"])

        led = cfg["led"]
        self.led = None
        if led is not None:
            off = 0 if led["active_high"] else 1
            pins = []
            for key in ("red_pin", "green_pin", "blue_pin"):
                pins.append(None if led[key] is None else _output(led[key], off))
            self.led = StatusLed(pins[0], pins[1], pins[2], led["active_high"], clk)

        self._rs485_cfg = cfg["rs485"]
        self._rs485 = None
        self._wdt = None
        self.watchdog_ms = cfg["watchdog_ms"]

    # -- features (what this board file declares) ------------------------------------
    @property
    def has_mirror(self):
        return self.contactor.has_mirror

    @property
    def has_rcd(self):
        return self.rcd is not None

    @property
    def has_lock(self):
        return self.lock is not None

    # -- time ---------------------------------------------------------------------------
    def ticks_ms(self):
        return self._clock.ticks_ms()

    def sleep_ms(self, ms):
        self._clock.sleep_ms(ms)

    # -- control pilot ------------------------------------------------------------------
    def set_pilot(self, duty_permille):
        self.pilot.set(duty_permille)

    def sample_pilot(self):
        d = self.pilot.duty_permille
        s = self.pilot_sampler
        s.sample(d == 0 or d == 1000)
        self.cp_high_mv = s.high_mv
        self.cp_low_mv = s.low_mv

    # -- proximity pilot ----------------------------------------------------------------
    def read_pp_ohms(self):
        return self.pp.read_ohms()

    # -- contactor ----------------------------------------------------------------------
    def set_contactor(self, closed):
        self.contactor.set(closed)

    def contactor_mirror_closed(self):
        return self.contactor.mirror_closed()

    # -- residual current ---------------------------------------------------------------
    def rcd_tripped(self):
        if self.rcd is None:
            return False
        return self.rcd.tripped()

    def set_rcd_test(self, on):
        if self.rcd is not None:
            self.rcd.set_test(on)

    # -- temperature --------------------------------------------------------------------
    def temperature_dc(self):
        if self.thermistor is None:
            return None
        return self.thermistor.read_dc()

    # -- socket lock --------------------------------------------------------------------
    def set_lock(self, locked):
        if self.lock is not None:
            self.lock.set(locked)

    def lock_confirmed(self):
        if self.lock is None:
            return True
        return self.lock.confirmed()

    # -- indication and supervision -----------------------------------------------------
    def set_led(self, pattern):
        if self.led is not None:
            self.led.show(pattern)

    def start_watchdog(self, timeout_ms=None):
        """Start the hardware watchdog (it cannot be stopped again until reset)."""
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=timeout_ms or self.watchdog_ms)

    def feed_watchdog(self):
        if self._wdt is not None:
            self._wdt.feed()

    # -- buses --------------------------------------------------------------------------
    def meter_uart(self, baudrate=9600, parity="N"):
        """The RS-485 stream (built on first use), with the meter's line settings."""
        r = self._rs485_cfg
        if r is None:
            return None
        if parity not in _PARITY:
            raise ValueError("parity must be N, E or O")
        par = _PARITY[parity]
        if self._rs485 is None:
            uart = machine.UART(r["uart_id"], baudrate=baudrate, bits=8, parity=par, stop=1,
                                tx=r["tx_pin"], rx=r["rx_pin"], rxbuf=r["rxbuf"],
                                timeout=0, timeout_char=0)
            de = _output(r["de_pin"], 0 if r["de_active_high"] else 1)
            self._rs485 = Rs485(uart, de, r["de_active_high"], self._clock, baudrate, par)
        elif self._rs485.baudrate != baudrate or self._rs485.parity != par:
            self._rs485.configure(baudrate, par)
        return self._rs485

    # -- system -------------------------------------------------------------------------
    def storage_root(self):
        return self._fs_root + "data"

    def reset_cause(self):
        return bootinfo.cause_name(machine.reset_cause())

    def last_crash(self):
        """The traceback text the previous run left (drivers/bootinfo.py), or None."""
        return bootinfo.last_crash()

    def clear_crash(self):
        bootinfo.clear_crash()

    def reset(self):
        machine.reset()

    def start_network(self, ssid, password, ntp_server):
        from drivers.wifi import Wifi
        self.wifi = Wifi(ssid, password, ntp_server)

    def network_step(self, now_ms):
        if self.wifi is not None:
            self.wifi.step(now_ms)

    def wall_time(self):
        dt = machine.RTC().datetime()
        if dt[0] < _RTC_VALID_FROM_YEAR:
            return None
        return unix_seconds(dt[0], dt[1], dt[2], dt[4], dt[5], dt[6])

    def safe_state(self):
        """Contactor open and the pilot at steady -12 V (state F, "EVSE not available"):
        what the board shows when the core is gone (a crash before the reset)."""
        self.contactor.set(False)
        self.pilot.set(_board.PILOT_STEADY_LOW)
        if self.led is not None:
            self.led.show(_board.LED_FAULT)
