"""A fake ESP32 `machine` module for running drivers off-hardware.

It runs on CPython (pytest) and on the MicroPython unix port, where it shadows the port's own
minimal `machine` (tests/fakes comes first on MICROPYPATH). Constructors take the same
arguments as the ESP32 port and enforce the same rules, so a driver that passes here does not
fail on the device for a reason we could have seen:

- valid GPIOs are 0-19, 21-23, 25-27, 32-39; anything else raises ValueError; configuring
  GPIO 6-11 (the SPI flash) restarts the chip (SimulatedReset), as it does on a module;
- GPIO 34-39 are input-only: Pin(34, Pin.OUT), PWM or UART TX on them raise ValueError,
  and their pull resistors do not exist (a pull request is accepted and has no effect);
- ADC exists on ADC1 (GPIO 32-39) and ADC2 (0, 2, 4, 12-15, 25-27); ADC2 reads raise
  OSError(ETIMEDOUT) while Wi-Fi is active (network.WLAN(...).active(True)), as the port does;
- PWM frequency 1 Hz..40 MHz, duty_u16 0..65535, duty_ns up to the period; a deinitialised
  PWM raises RuntimeError;
- UART ids 0..2, 5..8 data bits, parity None or an int (odd when `parity & 1`), 1 or 2 stop
  bits, rxbuf above the 128-byte hardware FIFO; init() discards received input;
- WDT cannot be stopped (there is no deinit), only fed; unfed past its timeout it restarts
  the chip (raises SimulatedReset, as machine.reset() does).

Everything a test needs lives on the module-level `sim` object (see the `Sim` class):
simulated time (`sim.advance_us`, `sim.clock` with ticks_ms/ticks_us/sleep_ms...), injected
ADC voltages and input levels, a log of every pin level and peripheral event with its
simulated time, UART peers, the watchdog, resets.

The hot calls (Pin.value, PWM.duty_u16, ADC.read_uv/read_u16, WDT.feed) allocate nothing:
the event log is preallocated, so `micropython.heap_lock()` tests measure the driver only.
"""
import array
import errno

_MAX_EVENTS = 8192

# Event kinds in the log.
EV_PIN_MODE = 1     # value = mode
EV_PIN_LEVEL = 2    # value = driven level (0/1), logged on change
EV_PWM_INIT = 3     # value = freq
EV_PWM_DUTY = 4     # value = duty_u16, logged on change
EV_PWM_FREQ = 5     # value = freq
EV_PWM_DEINIT = 6
EV_ADC_INIT = 7
EV_UART_INIT = 8    # pin = uart id, value = baudrate
EV_UART_TX = 9      # pin = uart id, value = simulated end of transmission (us)
EV_WDT_START = 10   # value = timeout ms
EV_WDT_EXPIRED = 11
EV_RESET = 12
EV_TIMER = 13       # pin = timer id, value = period ms (0 = deinit)
EV_PIN_PULL = 14    # value = pull

EVENT_NAMES = {
    EV_PIN_MODE: "pin_mode", EV_PIN_LEVEL: "pin_level", EV_PWM_INIT: "pwm_init",
    EV_PWM_DUTY: "pwm_duty", EV_PWM_FREQ: "pwm_freq", EV_PWM_DEINIT: "pwm_deinit",
    EV_ADC_INIT: "adc_init", EV_UART_INIT: "uart_init", EV_UART_TX: "uart_tx",
    EV_WDT_START: "wdt_start", EV_WDT_EXPIRED: "wdt_expired", EV_RESET: "reset",
    EV_TIMER: "timer", EV_PIN_PULL: "pin_pull",
}

VALID_PINS = tuple(list(range(0, 20)) + [21, 22, 23, 25, 26, 27] + list(range(32, 40)))
INPUT_ONLY_PINS = (34, 35, 36, 37, 38, 39)
FLASH_PINS = (6, 7, 8, 9, 10, 11)
ADC1_PINS = (32, 33, 34, 35, 36, 37, 38, 39)
ADC2_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27)

# machine.reset_cause() values of the ESP32 port.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# wake_reason()
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

_TICKS_MASK = (1 << 30) - 1
_TICKS_HALF = 1 << 29


# not of the port: ends a simulated run
class SimulationEnd(BaseException):
    """Raised by advance_us() when simulated time reaches `sim.stop_at_us`: ends a run of
    code that loops forever (Station.run()). Not an Exception, so crash handlers pass it."""


# not of the port: how a restart unwinds the host process
class SimulatedReset(SystemExit):
    """Raised by machine.reset() and by an expiring watchdog: on the device the chip restarts
    and nothing after it runs; here the program unwinds (SystemExit passes `except Exception`)."""


def _pin_id(pin):
    if isinstance(pin, Pin):
        return pin._id
    if isinstance(pin, int) and pin is not True and pin is not False:
        if pin in VALID_PINS:
            return pin
    raise ValueError("invalid pin")


class _Clock:
    """Time functions over the simulated clock, shaped like MicroPython's `time`.
    Pass it where a driver takes a clock; sleeping advances simulated time."""

    def __init__(self, sim):
        self._sim = sim

    def ticks_us(self):
        return self._sim.now_us & _TICKS_MASK

    def ticks_ms(self):
        return (self._sim.now_us // 1000) & _TICKS_MASK

    def ticks_cpu(self):
        return self._sim.now_us & _TICKS_MASK

    def ticks_add(self, ticks, delta):
        return (ticks + delta) & _TICKS_MASK

    def ticks_diff(self, end, start):
        return ((end - start + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF

    def sleep_us(self, us):
        self._sim.advance_us(us)

    def sleep_ms(self, ms):
        self._sim.advance_us(ms * 1000)

    def sleep(self, s):
        self._sim.advance_us(int(s * 1000000))

    def time(self):
        return self._sim.rtc_seconds_2000()


# not of the port: the far end of a UART, for tests
class UartPeer:
    """The far end of a fake UART (what is on the other side of the RS-485 transceiver).

    - `written` holds every byte the firmware sent; `take()` returns and clears it;
      `frames` lists (start_us, end_us, bytes) per write() call.
    - `send(data)` makes bytes available to the firmware's read()/any() at once;
      `responder = f(frame_bytes) -> reply or None` answers each write, the reply becoming
      readable `reply_delay_us` after the frame's last bit.
    - `connect(host, port)` forwards writes to a TCP socket (e.g. a pymodbus server with the
      RTU framer) and makes what the socket returns readable. The server answers in real
      time while the firmware runs in simulated time, so the first poll after a write waits
      up to `socket_wait_ms` of real time for the reply to start.
    """

    def __init__(self, sim, uart_id):
        self._sim = sim
        self.id = uart_id
        self.written = bytearray()
        self.frames = []
        self.responder = None
        self.reply_delay_us = 2000
        self._pending = []   # (ready_us, bytes)
        self.rx = bytearray()
        self.rx_overflow = 0
        self.rxbuf = 256
        self.sock = None
        self.socket_wait_ms = 1000
        self._awaiting = False

    def take(self):
        data = bytes(self.written)
        self.written = bytearray()
        return data

    def send(self, data):
        self._deliver(data)

    def connect(self, host, port):
        import socket
        addr = socket.getaddrinfo(host, port)[0][-1]
        s = socket.socket()
        s.connect(addr)
        s.setblocking(False)
        self.sock = s

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _deliver(self, data):
        room = self.rxbuf - len(self.rx)
        if len(data) > room:
            self.rx_overflow += len(data) - room
            data = data[:room]
        self.rx.extend(data)

    def _on_write(self, data, start_us, end_us):
        self.written.extend(data)
        self.frames.append((start_us, end_us, bytes(data)))
        if self.sock is not None:
            self.sock.send(bytes(data))
            self._awaiting = True
        if self.responder is not None:
            reply = self.responder(bytes(data))
            if reply:
                self._pending.append((end_us + self.reply_delay_us, bytes(reply)))

    def _poll(self):
        if self._pending:
            now = self._sim.now_us
            keep = []
            for ready, data in self._pending:
                if ready <= now:
                    self._deliver(data)
                else:
                    keep.append((ready, data))
            self._pending = keep
        if self.sock is not None:
            if self._awaiting:
                self.sock.settimeout(self.socket_wait_ms / 1000)
            try:
                data = self.sock.recv(256)
            except OSError:
                data = None     # nothing yet (EAGAIN) or no reply in time (timeout)
            if self._awaiting:
                self._awaiting = False
                self.sock.setblocking(False)
            if data:
                self._deliver(data)


# not of the port: the state behind the fakes and the hooks tests use
class Sim:
    """The state behind the fake peripherals, and the hooks tests use."""

    def __init__(self):
        self.clock = _Clock(self)
        # The event log is allocated at its first entry, with this many slots (20 bytes
        # each): a heap test at an ESP32's size sets it small before anything runs.
        self.log_capacity = _MAX_EVENTS
        self._ev_t = None
        self.reset()

    def _alloc_log(self):
        n = self.log_capacity
        self._ev_t = array.array("q", [0] * n)
        self._ev_v = array.array("q", [0] * n)
        self._ev_k = array.array("h", [0] * n)
        self._ev_p = array.array("h", [0] * n)

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self):
        """Forget everything: a fresh chip at simulated time 0, powered on."""
        self.now_us = 0
        self.stop_at_us = None         # advance_us() raises SimulationEnd from here on
        self.adc_read_us = 25          # simulated duration of one ADC conversion
        self.reset_cause = PWRON_RESET
        self.reset_count = 0
        self.wifi_active = False
        self.wifi_connected = False
        self.wifi_disconn_reason = 0   # the last WIFI_REASON_* (see tests/fakes/network.py)
        self.rtc_base_s = 0            # RTC seconds since 2000-01-01 at now_us == rtc_base_us
        self.rtc_base_us = 0
        self.cpu_freq = 160000000
        self.rtc_memory = b""          # RTC.memory(): kept by every reset but power-on
        self._inputs = {}              # pin -> level or callable(t_us)
        self._adc = {}                 # pin -> millivolts or callable(t_us)
        self._n = 0
        self.log_overflow = False
        self.peers = {}
        self._power_on_state()
        # The sibling fakes keep their own state: a fresh chip has Wi-Fi off and empty NVS.
        import sys
        net = sys.modules.get("network")
        if net is not None and hasattr(net, "WLAN"):
            net.WLAN._active.clear()
            net.WLAN._requested = False
        esp = sys.modules.get("esp32")
        if esp is not None and hasattr(esp, "_reset_all"):
            esp._reset_all()

    def _power_on_state(self):
        self._mode = {}                # pin -> mode (absent = reset state, input floating)
        self._pull = {}
        self._out = {}                 # pin -> output register (0/1)
        self._pwm = {}                 # pin -> PWM object
        self._irqs = {}                # pin -> (Pin, handler, trigger)
        self._adc_atten = {}           # pin -> attenuation (the port keeps it per channel)
        self._adc_bits = {1: 12, 2: 12}  # ADC block -> width in bits
        self.wdt_timeout_ms = 0        # 0 = not started
        self.wdt_last_feed_us = 0
        self.wdt_expired = False
        self._timers = {}

    def power_cycle(self, cause=PWRON_RESET):
        """The chip restarts: peripherals back to reset state, uncommitted NVS lost, the
        clock and the log keep running."""
        self.reset_cause = cause
        self._power_on_state()
        if cause == PWRON_RESET:
            # ports/esp32/machine_rtc.c: RTC user memory is RTC_NOINIT_ATTR: it survives
            # every reset but a power-on.
            self.rtc_memory = b""
        for peer in self.peers.values():
            peer.rx = bytearray()
            peer._pending = []
        try:
            import esp32
            esp32._power_cycle()
        except ImportError:
            pass

    # -- time ---------------------------------------------------------------------------
    def advance_us(self, us):
        """Advance simulated time, firing due Timer callbacks and the watchdog."""
        end = self.now_us + us
        while self._timers:   # (iterating allocates: only while a Timer is armed)
            due = None
            for t in self._timers.values():
                if t._next_us is not None and t._next_us <= end and (due is None or t._next_us < due._next_us):
                    due = t
            if due is None:
                break
            self.now_us = max(self.now_us, due._next_us)
            self._check_wdt()
            due._fire()
        self.now_us = end
        self._check_wdt()
        if self.stop_at_us is not None and end >= self.stop_at_us:
            self.stop_at_us = None
            raise SimulationEnd()

    def advance_ms(self, ms):
        self.advance_us(ms * 1000)

    def _check_wdt(self):
        if self.wdt_timeout_ms and not self.wdt_expired:
            if self.now_us - self.wdt_last_feed_us > self.wdt_timeout_ms * 1000:
                # The port's WDT is the ESP-IDF task watchdog with trigger_panic: the chip
                # restarts (reset_cause() WDT_RESET next boot) and nothing after this runs.
                self.wdt_expired = True
                t = self.wdt_last_feed_us + self.wdt_timeout_ms * 1000
                self._log_at(t, EV_WDT_EXPIRED, 0, self.wdt_timeout_ms)
                self.reset_count += 1
                self._log_at(t, EV_RESET, 0, WDT_RESET)
                raise SimulatedReset(0)

    # -- inputs ---------------------------------------------------------------------------
    def set_adc(self, pin, mv):
        """The voltage at an ADC pin in millivolts: an int, or callable(t_us) -> int mV.
        A callable must use integer math to stay allocation-free."""
        self._adc[pin] = mv

    def set_input(self, pin, level):
        """The external level at an input pin: 0/1, None (floating), or callable(t_us).
        A change fires the pin's irq() handler at once when its trigger matches (the
        ESP32's Pin IRQs are soft, i.e. scheduled: the handler runs as ordinary code)."""
        before = self.level(pin)
        self._inputs[pin] = level
        irq = self._irqs.get(pin)
        if irq is None:
            return
        after = self.level(pin)
        obj, handler, trigger = irq
        if handler is None or before == after or after is None:
            return
        if (after == 1 and trigger & Pin.IRQ_RISING) or (after == 0 and trigger & Pin.IRQ_FALLING):
            handler(obj)

    def adc_mv(self, pin):
        src = self._adc.get(pin, 0)
        if callable(src):
            return src(self.now_us)
        return src

    # -- outputs and the log -------------------------------------------------------------
    def level(self, pin):
        """The level at a pin now: the driven level of an output (the PWM waveform for a
        PWM pin), the external/pull level of an input, None when nothing defines it."""
        if pin in self._pwm:
            return 1 if self.pwm_output_high(pin) else 0
        mode = self._mode.get(pin)
        if mode == Pin.OUT:
            return self._out.get(pin, 0)
        if mode == Pin.OPEN_DRAIN and self._out.get(pin, 0) == 0:
            return 0
        return self._external(pin)

    def _external(self, pin):
        src = self._inputs.get(pin)
        if callable(src):
            return src(self.now_us)
        if src is not None:
            return src
        pull = self._pull.get(pin)
        if pin in INPUT_ONLY_PINS:
            return None
        if pull == Pin.PULL_UP:
            return 1
        if pull == Pin.PULL_DOWN:
            return 0
        return None

    def mode(self, pin):
        return self._mode.get(pin)

    def pwm_output_high(self, pin, t_us=None):
        """True while the PWM on `pin` drives its high level (at t_us, default now)."""
        p = self._pwm.get(pin)
        if p is None:
            return False
        return p._high_at(self.now_us if t_us is None else t_us)

    def pwm(self, pin):
        """The active PWM object on `pin`, or None."""
        return self._pwm.get(pin)

    def _log(self, kind, pin, value):
        n = self._n
        if self._ev_t is None:
            self._alloc_log()
        if n >= self.log_capacity:
            self.log_overflow = True
            return
        self._ev_t[n] = self.now_us
        self._ev_k[n] = kind
        self._ev_p[n] = pin
        self._ev_v[n] = value
        self._n = n + 1

    def _log_at(self, t_us, kind, pin, value):
        n = self._n
        self._log(kind, pin, value)
        if n < self._n:
            self._ev_t[n] = t_us

    def events(self, kind=None, pin=None):
        """The log as a list of (t_us, kind_name, pin, value), in order of occurrence."""
        out = []
        for i in range(self._n):
            k = self._ev_k[i]
            if (kind is None or EVENT_NAMES[k] == kind) and (pin is None or self._ev_p[i] == pin):
                out.append((self._ev_t[i], EVENT_NAMES[k], self._ev_p[i], self._ev_v[i]))
        return out

    def clear_events(self):
        self._n = 0
        self.log_overflow = False

    def history(self, pin):
        """(t_us, level) each time the driven level of `pin` was set or changed."""
        return [(t, v) for t, _k, _p, v in self.events("pin_level", pin)]

    def level_at(self, pin, t_us):
        """The driven level of an output pin at simulated time t_us (None before any)."""
        level = None
        for t, v in self.history(pin):
            if t > t_us:
                break
            level = v
        return level

    # -- UART ----------------------------------------------------------------------------
    def uart_peer(self, uart_id):
        peer = self.peers.get(uart_id)
        if peer is None:
            peer = self.peers[uart_id] = UartPeer(self, uart_id)
        return peer

    # -- RTC -----------------------------------------------------------------------------
    def rtc_seconds_2000(self):
        return self.rtc_base_s + (self.now_us - self.rtc_base_us) // 1000000

    def set_rtc_seconds_2000(self, seconds):
        self.rtc_base_s = seconds
        self.rtc_base_us = self.now_us


sim = Sim()


# -- Pin -------------------------------------------------------------------------------
# ports/esp32/machine_pin.c: machine_pin_locals_dict_table: IN, OUT (GPIO_MODE_INPUT_OUTPUT),
# OPEN_DRAIN, PULL_UP, PULL_DOWN, IRQ_RISING/FALLING (GPIO_INTR_*); there is no PULL_HOLD
class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self._id = _pin_id(id)
        self.init(mode, pull, value=value, drive=drive, hold=hold)

    # ports/esp32/machine_pin.c: machine_pin_obj_init_helper
    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        pin = self._id
        if pin in FLASH_PINS and (mode != -1 or pull != -1 or value is not None
                                  or drive is not None or hold is not None):
            # init() routes the pad to the GPIO matrix (esp_rom_gpio_pad_select_gpio): the
            # SPI flash is gone, the next cache miss panics and the chip restarts.
            sim.reset_count += 1
            sim._log(EV_RESET, pin, HARD_RESET)
            raise SimulatedReset(0)
        if mode not in (-1, None, Pin.IN, Pin.OUT, Pin.OPEN_DRAIN):
            raise ValueError("invalid pin mode")
        if mode in (Pin.OUT, Pin.OPEN_DRAIN) and pin in INPUT_ONLY_PINS:
            raise ValueError("pin can only be input")
        if pull not in (-1, None, Pin.PULL_UP, Pin.PULL_DOWN):
            raise ValueError("invalid pull")
        if drive is not None and drive not in (0, 1, 2, 3):
            raise ValueError("invalid drive")
        if value is not None:
            self._write(1 if value else 0)
        if mode is not None and mode != -1:
            if sim._mode.get(pin) != mode:
                sim._mode[pin] = mode
                sim._log(EV_PIN_MODE, pin, mode)
                if mode in (Pin.OUT, Pin.OPEN_DRAIN):
                    # The output register now reaches the pad: log the level it drives.
                    sim._log(EV_PIN_LEVEL, pin, sim._out.get(pin, 0))
        if pull is not None and pull != -1:
            # GPIO 34-39 have no pull resistors: the request is accepted and does nothing.
            if pin not in INPUT_ONLY_PINS:
                sim._pull[pin] = pull
                sim._log(EV_PIN_PULL, pin, pull)
        elif pull is None:
            sim._pull.pop(pin, None)

    def _write(self, level):
        pin = self._id
        old = sim._out.get(pin)
        sim._out[pin] = level
        mode = sim._mode.get(pin)
        if old != level and (mode == Pin.OUT or mode == Pin.OPEN_DRAIN):
            sim._log(EV_PIN_LEVEL, pin, level)

    # ports/esp32/machine_pin.c: machine_pin_value
    def value(self, x=None):
        if x is None:
            level = sim.level(self._id)
            return 0 if level is None else level
        self._write(1 if x else 0)

    # ports/esp32/machine_pin.c: machine_pin_call
    def __call__(self, x=None):
        return self.value(x)

    # ports/esp32/machine_pin.c: machine_pin_on
    def on(self):
        self._write(1)

    # ports/esp32/machine_pin.c: machine_pin_off
    def off(self):
        self._write(0)

    # ports/esp32/machine_pin.c: machine_pin_irq: handler, trigger, wake; no `hard`
    # (pin IRQs are scheduled)
    def irq(self, handler=None, trigger=3, *, wake=None):
        # No `hard` argument: ESP32 pin IRQs are always soft.
        sim._irqs[self._id] = (self, handler, trigger)

    def __repr__(self):
        return "Pin(%d)" % self._id


# extmod/machine_signal.c: signal_make_new
class Signal:
    def __init__(self, pin, *args, invert=False, **kwargs):
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, *args, **kwargs)
        self._invert = invert

    # extmod/machine_signal.c: signal_value
    def value(self, x=None):
        if x is None:
            return self._pin.value() ^ (1 if self._invert else 0)
        self._pin.value((1 if x else 0) ^ (1 if self._invert else 0))

    # extmod/machine_signal.c: signal_call
    def __call__(self, x=None):
        return self.value(x)

    # extmod/machine_signal.c: signal_on
    def on(self):
        self.value(1)

    # extmod/machine_signal.c: signal_off
    def off(self):
        self.value(0)


# -- ADC -------------------------------------------------------------------------------
# Full-scale input in mV per attenuation (ESP32 datasheet, approximate). The calibrated
# read_uv() is only linear in about 150..2450 mV at 11 dB: the board file states its
# usable range; the fake clamps at full scale and does not model the curvature.
_FULL_SCALE_MV = (950, 1250, 1750, 3100)


class ADC:
    """One object per channel (ports/esp32/machine_adc.c: madc_obj). Every ADC(pin) runs
    madc_init_helper: the attenuation becomes `atten`, or 11 dB (ADC_ATTEN_MAX) when none is
    given, and the block's width goes back to 12 bits (ADC_WIDTH_MAX); width() is per block."""
    # ports/esp32/machine_adc.c: madc_init_helper, mp_machine_adc_make_new
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12

    def __init__(self, pin, *, atten=None):
        pid = _pin_id(pin)
        if pid not in ADC1_PINS and pid not in ADC2_PINS:
            raise ValueError("invalid pin")
        self._id = pid
        self._adc2 = pid in ADC2_PINS
        self._block = 2 if self._adc2 else 1
        self.atten(ADC.ATTN_11DB if atten is None else atten)
        sim._adc_bits[self._block] = 12
        sim._log(EV_ADC_INIT, pid, self._atten)

    @property
    def _atten(self):
        # ports/esp32/machine_adc.c: mp_machine_adc_atten_get_helper (unset reads as 11 dB)
        return sim._adc_atten.get(self._id, ADC.ATTN_11DB)

    @property
    def _width(self):
        return sim._adc_bits[self._block]

    def atten(self, atten):
        # ports/esp32/machine_adc.c: mp_machine_adc_atten_set_helper
        if atten not in (0, 1, 2, 3):
            raise ValueError("invalid attenuation")
        sim._adc_atten[self._id] = atten

    def width(self, width):
        # ports/esp32/machine_adc.c: mp_machine_adc_block_width_set_helper (ESP32: 9..12 bits)
        if width not in (9, 10, 11, 12):
            raise ValueError("invalid bit-width")
        sim._adc_bits[self._block] = width

    def init(self, *, atten=None):
        # ports/esp32/machine_adc.c: mp_machine_adc_init_helper -> madc_init_helper
        self.atten(ADC.ATTN_11DB if atten is None else atten)
        sim._adc_bits[self._block] = 12

    def _sample_mv(self):
        if self._adc2 and sim.wifi_active:
            # adc2_get_raw() times out while the Wi-Fi driver owns ADC2.
            raise OSError(errno.ETIMEDOUT)
        mv = sim.adc_mv(self._id)
        sim.advance_us(sim.adc_read_us)
        fs = _FULL_SCALE_MV[self._atten]
        if mv < 0:
            return 0
        if mv > fs:
            return fs
        return mv

    def read_uv(self):
        # ports/esp32/adc.c: madcblock_read_uv_helper: adc_cali_raw_to_voltage() gives whole
        # millivolts, times 1000 (so read_uv() is always a multiple of 1000)
        return self._sample_mv() * 1000

    def read_u16(self):
        # ports/esp32/machine_adc.c: mp_machine_adc_read_u16: the raw reading scaled up by
        # bit replication, raw << (16 - bits) | raw >> (2 * bits - 16); not calibrated
        raw = self.read()
        bits = self._width
        return (raw << (16 - bits)) | (raw >> (2 * bits - 16))

    def read(self):
        # ports/esp32/adc.c: madcblock_read_helper (raw, `width` bits)
        return self._sample_mv() * ((1 << self._width) - 1) // _FULL_SCALE_MV[self._atten]


# -- PWM -------------------------------------------------------------------------------
_PWM_CHANNELS = 16


class PWM:
    # ports/esp32/machine_pwm.c: mp_machine_pwm_make_new, mp_machine_pwm_init_helper:
    # PWM(dest, freq, *, duty, duty_u16, duty_ns, invert, lightsleep); a new object on a pin
    # keeps the pin's timer frequency but not its duty (self_reset: 50 % unless given); a
    # deinitialised object raises RuntimeError("PWM is inactive") (pwm_is_active).
    # check_duty_u16: 65535 is stored as 2**16, i.e. a steady high level, and 0 a steady low
    # one (apply_duty writes duty >> (16 - resolution), at 1 kHz the resolution is 16 bits).
    def __init__(self, dest, freq=None, *, duty=None, duty_u16=None, duty_ns=None,
                 invert=False, lightsleep=False):
        pid = _pin_id(dest)
        if pid in INPUT_ONLY_PINS:
            raise ValueError("pin can only be input")
        if pid not in sim._pwm and len(sim._pwm) >= _PWM_CHANNELS:
            raise RuntimeError("out of PWM channels:%d" % _PWM_CHANNELS)
        self._id = pid
        self._freq = 5000
        self._duty = 32768
        self._invert = bool(invert)
        self._start_us = sim.now_us
        self._active = True
        old = sim._pwm.get(pid)
        if old is not None:
            self._freq = old._freq
        sim._pwm[pid] = self
        sim._mode[pid] = Pin.OUT
        if freq is not None:
            self._check_freq(freq)
            self._freq = freq
        sim._log(EV_PWM_INIT, pid, self._freq)
        self._set(duty, duty_u16, duty_ns)

    def init(self, freq=None, *, duty=None, duty_u16=None, duty_ns=None, invert=None,
             lightsleep=None):
        # ports/esp32/machine_pwm.c: mp_machine_pwm_init_helper
        if freq is not None:
            self.freq(freq)
        if invert is not None:
            self._invert = bool(invert)
        self._set(duty, duty_u16, duty_ns)

    def _set(self, duty, duty_u16, duty_ns):
        if duty_u16 is not None:
            self.duty_u16(duty_u16)
        elif duty_ns is not None:
            self.duty_ns(duty_ns)
        elif duty is not None:
            self.duty(duty)

    @staticmethod
    def _check_freq(freq):
        if not isinstance(freq, int) or freq < 1 or freq > 40000000:
            raise ValueError("frequency must be from 1Hz to 40MHz")

    def _check_active(self):
        if not self._active or sim._pwm.get(self._id) is not self:
            raise RuntimeError("PWM is inactive")

    def freq(self, value=None):
        # ports/esp32/machine_pwm.c: mp_machine_pwm_freq_get, mp_machine_pwm_freq_set
        self._check_active()
        if value is None:
            return self._freq
        self._check_freq(value)
        if value != self._freq:
            self._freq = value
            self._start_us = sim.now_us
            sim._log(EV_PWM_FREQ, self._id, value)

    def _resolution(self):
        # ports/esp32/machine_pwm.c: find_suitable_duty_resolution: log2(80 MHz APB / freq)
        # bits, at most 16 (the ESP32's 20-bit limit never applies below 16 bits)
        bits = 0
        div = 80000000 // self._freq
        while div > 1:
            div >>= 1
            bits += 1
        return min(16, bits)

    def duty(self, value=None):
        # ports/esp32/machine_pwm.c: check_duty_u10, get_duty_u10: 10 bits shifted by 6,
        # 1023 stored as 1024 (steady high)
        self._check_active()
        if value is None:
            return self.duty_u16() >> 6
        if value < 0 or value > 1023:
            raise ValueError("duty must be from 0 to 1023")
        self._store(65536 if value == 1023 else value << 6)

    def duty_u16(self, value=None):
        # ports/esp32/machine_pwm.c: check_duty_u16, get_duty_u16: the duty reads back at the
        # timer's resolution; 65535 is stored as 2**16 and reads back as 65535
        self._check_active()
        if value is None:
            shift = 16 - self._resolution()
            duty = (self._duty >> shift) << shift
            return 65535 if duty >= 65536 else duty
        if value < 0 or value > 65535:
            raise ValueError("duty_u16 must be from 0 to 65536")   # sic: the port's text
        self._store(65536 if value == 65535 else value)

    def _store(self, value):
        if value != self._duty:
            self._duty = value
            sim._log(EV_PWM_DUTY, self._id, 65535 if value >= 65536 else value)

    def duty_ns(self, value=None):
        # ports/esp32/machine_pwm.c: ns_to_duty, duty_to_ns, check_duty_ns
        self._check_active()
        period_ns = (1000000000 + self._freq // 2) // self._freq
        if value is None:
            return (self.duty_u16() * 1000000000 + self._freq * 32768) // (self._freq * 65536)
        if value < 0 or value > period_ns:
            raise ValueError("duty_ns must be from 0 to %d ns" % period_ns)
        duty = (value * 65536 * self._freq + 500000000) // 1000000000
        if value > 0 and duty == 0:
            duty = 1
        self._store(min(65536, duty))

    def deinit(self):
        # ports/esp32/machine_pwm.c: mp_machine_pwm_deinit -> pwm_deinit
        if sim._pwm.get(self._id) is self:
            del sim._pwm[self._id]
            sim._log(EV_PWM_DEINIT, self._id, 0)
        self._active = False

    def _high_at(self, t_us):
        if self._duty >= 65536:
            high = True
        elif self._duty <= 0:
            high = False
        else:
            period = 1000000 // self._freq
            phase = (t_us - self._start_us) % period
            high = phase < period * self._duty // 65536
        return high != self._invert


# -- UART ------------------------------------------------------------------------------
_UART_HW_FIFO_LEN = 128


# ports/esp32/machine_uart.c: mp_machine_uart_make_new (UART ids 0..2 on the ESP32)
class UART:
    INV_TX = 1
    INV_RX = 2
    INV_RTS = 4
    INV_CTS = 8
    RTS = 1
    CTS = 2

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, **kwargs):
        if id not in (0, 1, 2):
            raise ValueError("UART(%s) does not exist" % (id,))
        self._id = id
        self._baud = 115200
        self._bits = 8
        self._parity = None
        self._stop = 1
        self._timeout = 0
        self._timeout_char = 0
        self._busy_until = 0
        self._peer = sim.uart_peer(id)
        self.init(baudrate, bits, parity, stop, **kwargs)

    # ports/esp32/machine_uart.c: mp_machine_uart_init_helper
    def init(self, baudrate=None, bits=None, parity=-1, stop=None, *, tx=None, rx=None,
             rts=None, cts=None, txbuf=None, rxbuf=None, timeout=None, timeout_char=None,
             invert=None, flow=None):
        if baudrate is not None:
            if not isinstance(baudrate, int) or baudrate <= 0 or baudrate > 5000000:
                raise ValueError("invalid baudrate")
            self._baud = baudrate
        if bits is not None:
            if bits not in (5, 6, 7, 8):
                raise ValueError("invalid data bits")
            self._bits = bits
        if parity != -1:
            # machine_uart.c: None disables parity; any int is odd when `parity & 1`.
            if parity is None:
                self._parity = None
            elif isinstance(parity, int):
                self._parity = parity & 1
            else:
                raise TypeError("can't convert %s to int" % type(parity).__name__)
        if stop is not None:
            if stop not in (1, 2):
                raise ValueError("invalid stop bits")
            self._stop = stop
        for p in (tx, rts):
            if p is not None and _pin_id(p) in INPUT_ONLY_PINS:
                raise ValueError("pin can only be input")
        for p in (rx, cts):
            if p is not None:
                _pin_id(p)
        if rxbuf is not None and rxbuf >= 0:
            # uart_driver_install() wants an rx ring buffer larger than the hardware FIFO
            # (128 bytes); its ESP_FAIL reaches Python as OSError through check_esp_err().
            if rxbuf <= _UART_HW_FIFO_LEN:
                raise OSError(1, "ESP_FAIL")
            self._peer.rxbuf = rxbuf
        if timeout is not None:
            self._timeout = timeout
        if timeout_char is not None:
            self._timeout_char = timeout_char
        # init() ends in uart_flush_input(): whatever was received before is discarded.
        self._peer.rx = bytearray()
        sim._log(EV_UART_INIT, self._id, self._baud)

    # not of the port: test helper
    def char_us(self):
        """Simulated duration of one character on the wire (test helper)."""
        bits = 1 + self._bits + (0 if self._parity is None else 1) + self._stop
        return (bits * 1000000 + self._baud - 1) // self._baud

    # ports/esp32/machine_uart.c: mp_machine_uart_deinit
    def deinit(self):
        pass

    # ports/esp32/machine_uart.c: mp_machine_uart_write: uart_write_bytes() copies into the
    # TX ring buffer and returns the count at once
    def write(self, buf):
        n = len(buf)
        if not n:
            return 0
        start = max(sim.now_us, self._busy_until)
        end = start + n * self.char_us()
        self._busy_until = end
        sim._log_at(start, EV_UART_TX, self._id, end)
        self._peer._on_write(bytes(buf), start, end)
        return n

    # ports/esp32/machine_uart.c: mp_machine_uart_txdone
    def txdone(self):
        return sim.now_us >= self._busy_until

    # ports/esp32/machine_uart.c: mp_machine_uart_ioctl (MP_STREAM_FLUSH: uart_wait_tx_done)
    def flush(self):
        # Blocks until the last byte has left the transmitter.
        if sim.now_us < self._busy_until:
            sim.advance_us(self._busy_until - sim.now_us)

    # ports/esp32/machine_uart.c: mp_machine_uart_any
    def any(self):
        self._peer._poll()
        return len(self._peer.rx)

    def _wait_for_data(self):
        self._peer._poll()
        if not self._peer.rx and self._timeout:
            sim.advance_us(self._timeout * 1000)
            self._peer._poll()

    # ports/esp32/machine_uart.c: mp_machine_uart_read: waits `timeout` ms for the first
    # byte; None when nothing came
    def read(self, nbytes=None):
        self._wait_for_data()
        rx = self._peer.rx
        if not rx:
            return None
        n = len(rx) if nbytes is None else min(nbytes, len(rx))
        data = bytes(rx[:n])
        self._peer.rx = rx[n:]
        return data

    # ports/esp32/machine_uart.c: mp_machine_uart_read
    def readinto(self, buf, nbytes=None):
        self._wait_for_data()
        rx = self._peer.rx
        if not rx:
            return None
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, len(rx))
        buf[:n] = rx[:n]
        self._peer.rx = rx[n:]
        return n

    # ports/esp32/machine_uart.c: mp_machine_uart_read
    def readline(self):
        self._wait_for_data()
        rx = self._peer.rx
        i = rx.find(b"\n")
        n = len(rx) if i < 0 else i + 1
        if not n:
            return None
        data = bytes(rx[:n])
        self._peer.rx = rx[n:]
        return data

    # ports/esp32/machine_uart.c: mp_machine_uart_sendbreak
    def sendbreak(self):
        pass


# -- WDT -------------------------------------------------------------------------------
# ports/esp32/machine_wdt.c: mp_machine_wdt_make_new_instance: timeout in ms, the IDF task
# watchdog with trigger_panic; there is no deinit
class WDT:
    """Once started it runs until reset: there is deliberately no deinit()."""

    def __init__(self, id=0, timeout=5000):
        # machine_wdt.c: ValueError() for another id, "WDT timeout too short" for <= 0; a
        # second WDT(timeout=...) reconfigures the running one.
        if id != 0:
            raise ValueError()
        if not isinstance(timeout, int):
            raise TypeError("can't convert to int")
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        sim.wdt_timeout_ms = timeout
        sim.wdt_last_feed_us = sim.now_us
        sim.wdt_expired = False
        sim._log(EV_WDT_START, 0, timeout)

    # ports/esp32/machine_wdt.c: mp_machine_wdt_feed
    def feed(self):
        sim.wdt_last_feed_us = sim.now_us


# -- Timer -----------------------------------------------------------------------------
# ports/esp32/machine_timer.c: machine_timer_make_new (ids 0..3; ONE_SHOT=0, PERIODIC=1)
class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, **kwargs):
        if id not in (0, 1, 2, 3):
            raise ValueError("invalid Timer number")
        self._id = id
        self._next_us = None
        self._period_us = 0
        self._mode = Timer.PERIODIC
        self._callback = None
        if kwargs:
            self.init(**kwargs)

    def init(self, *, mode=1, period=-1, freq=-1, callback=None, tick_hz=1000, hard=False):
        # ports/esp32/machine_timer.c: machine_timer_init_helper (soft callbacks only)
        if hard:
            raise ValueError("hard Timers are not implemented")
        if freq is not None and freq > 0:
            period_us = 1000000 // freq
        elif period is not None and period >= 0:
            period_us = period * 1000000 // tick_hz
        else:
            raise ValueError("period or freq required")
        self._mode = mode
        self._period_us = max(1, period_us)
        self._callback = callback
        self._next_us = sim.now_us + self._period_us
        sim._timers[self._id] = self
        sim._log(EV_TIMER, self._id, self._period_us // 1000)

    # ports/esp32/machine_timer.c: machine_timer_deinit
    def deinit(self):
        self._next_us = None
        if sim._timers.get(self._id) is self:
            del sim._timers[self._id]
        sim._log(EV_TIMER, self._id, 0)

    # ports/esp32/machine_timer.c: machine_timer_value
    def value(self):
        if self._next_us is None:
            return 0
        return (self._period_us - (self._next_us - sim.now_us)) // 1000

    def _fire(self):
        if self._mode == Timer.PERIODIC:
            self._next_us += self._period_us
        else:
            self._next_us = None
            if sim._timers.get(self._id) is self:
                del sim._timers[self._id]
        if self._callback is not None:
            self._callback(self)


# -- RTC -------------------------------------------------------------------------------
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _days_since_2000(y, m, d):
    days = 0
    for year in range(2000, y):
        days += 366 if _leap(year) else 365
    days += _DAYS_BEFORE_MONTH[m - 1] + d - 1
    if m > 2 and _leap(y):
        days += 1
    return days


_RTC_USER_MEM_MAX = 2048


class RTC:
    # ports/esp32/machine_rtc.c: machine_rtc_make_new (one RTC, the epoch is 2000-01-01)
    def __init__(self, id=0):
        pass

    # ports/esp32/machine_rtc.c: machine_rtc_init
    def init(self, datetime=None):
        if datetime is not None:
            self.datetime(datetime)

    # ports/esp32/machine_rtc.c: machine_rtc_datetime_helper
    def datetime(self, dt=None):
        if dt is None:
            s = sim.rtc_seconds_2000()
            days, rem = divmod(s, 86400)
            weekday = (days + 5) % 7   # 2000-01-01 was a Saturday; Monday = 0
            y = 2000
            while True:
                n = 366 if _leap(y) else 365
                if days < n:
                    break
                days -= n
                y += 1
            m = 1
            while m < 12:
                start = _DAYS_BEFORE_MONTH[m] + (1 if m >= 2 and _leap(y) else 0)
                if days < start:
                    break
                m += 1
            first = _DAYS_BEFORE_MONTH[m - 1] + (1 if m > 2 and _leap(y) else 0)
            subsec = sim.now_us % 1000000
            return (y, m, days - first + 1, weekday, rem // 3600, rem // 60 % 60, rem % 60, subsec)
        y, m, d = dt[0], dt[1], dt[2]
        h = dt[4] if len(dt) > 4 else 0
        mi = dt[5] if len(dt) > 5 else 0
        s = dt[6] if len(dt) > 6 else 0
        if y < 2000 or not 1 <= m <= 12 or not 1 <= d <= 31:
            raise ValueError("invalid datetime")
        sim.set_rtc_seconds_2000(_days_since_2000(y, m, d) * 86400 + h * 3600 + mi * 60 + s)

    def memory(self, data=None):
        # ports/esp32/machine_rtc.c: machine_rtc_memory: MICROPY_HW_RTC_USER_MEM_MAX = 2048
        # bytes, kept across resets other than power-on (RTC_NOINIT_ATTR)
        if data is None:
            return bytes(getattr(sim, "rtc_memory", b""))
        if len(data) > _RTC_USER_MEM_MAX:
            raise ValueError("buffer too long")
        sim.rtc_memory = bytes(data)


# -- module functions -------------------------------------------------------------------
# ports/esp32/modmachine.c: mp_machine_reset (esp_restart)
def reset():
    sim.reset_count += 1
    sim._log(EV_RESET, 0, HARD_RESET)
    raise SimulatedReset(0)


# extmod/modmachine.c: machine_module_globals_table: soft_reset is sys.exit (SystemExit)
def soft_reset():
    sim.reset_count += 1
    sim._log(EV_RESET, 0, SOFT_RESET)
    raise SimulatedReset(0)


# ports/esp32/modmachine.c: mp_machine_reset_cause: PWRON_RESET=1 .. SOFT_RESET=5 (brown-out
# reads as PWRON_RESET)
def reset_cause():
    return sim.reset_cause


# ports/esp32/modmachine.c: machine_wake_reason
def wake_reason():
    return 0


# ports/esp32/modmachine.c: mp_machine_unique_id (the base MAC)
def unique_id():
    return b"\x24\x0a\xc4\x5e\x00\x01"


# ports/esp32/modmachine.c: mp_machine_get_freq, mp_machine_set_freq
def freq(hz=None):
    if hz is None:
        return sim.cpu_freq
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    sim.cpu_freq = hz


# ports/esp32/modmachine.c: mp_machine_idle
def idle():
    pass


# extmod/modmachine.c: machine_disable_irq
def disable_irq():
    return 0


# extmod/modmachine.c: machine_enable_irq
def enable_irq(state=0):
    pass


# ports/esp32/modmachine.c: mp_machine_lightsleep
def lightsleep(ms=None):
    if ms:
        sim.advance_us(ms * 1000)


# ports/esp32/modmachine.c: mp_machine_deepsleep
def deepsleep(ms=None):
    sim.reset_count += 1
    sim._log(EV_RESET, 0, DEEPSLEEP_RESET)
    raise SimulatedReset(0)


# extmod/machine_pulse.c: machine_time_pulse_us_
def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    return -1
