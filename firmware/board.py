"""The board-support interface: everything the charging logic needs from hardware.

The core never touches pins. The ESP32 board (drivers/esp32_board.py) and the simulator's
board (tools/pilotsim) both implement this class, so the same firmware runs on either.

Units are integers, because the safety tick must not allocate (floats are heap objects on
MicroPython): millivolts, ohms, milliamps, tenths of a degree Celsius, milliseconds.

Methods marked [tick] are called from the safety tick: they must not allocate, must not block
on I/O and must return within a few hundred microseconds.
"""

# Pilot output: duty in tenths of a percent. 1000 = steady +12 V (states A, B1, C1: no PWM);
# 0 = steady -12 V (state F: EVSE not available); anything between is the 1 kHz PWM duty.
PILOT_STEADY_HIGH = 1000
PILOT_STEADY_LOW = 0

# A PP reading above this means no cable (open circuit), in ohms.
PP_OPEN_OHMS = 100000

# LED patterns (the board maps them to colours / blinking).
LED_OFF = 0
LED_IDLE = 1        # A: ready, no EV
LED_CONNECTED = 2   # B: EV connected, waiting
LED_CHARGING = 3    # C/D with contactor closed
LED_PAUSED = 4      # EV connected, offered current paused
LED_FAULT = 5       # any active fault
LED_UNAVAILABLE = 6 # inoperative, service mode
LED_BOOT = 7


class Board:
    """Abstract board. Subclasses override every method; the defaults document the contract."""

    # The current the hardware is rated for (mA): supply, contactor, wiring, a tethered
    # cable. The charger never offers more (the ESP32 board takes it from its board file).
    rated_current_ma = 32000

    # -- time ---------------------------------------------------------------------
    def ticks_ms(self):
        """[tick] Milliseconds, wrapping at 2**30 like time.ticks_ms(). The simulator's board
        returns simulated time; the ESP32 board returns time.ticks_ms()."""
        raise NotImplementedError

    def sleep_ms(self, ms):
        """Wait `ms` milliseconds (the simulator advances its clock instead)."""
        raise NotImplementedError

    # -- control pilot ------------------------------------------------------------------
    def set_pilot(self, duty_permille):
        """[tick] Drive the CP: 0..1000, see PILOT_STEADY_HIGH / PILOT_STEADY_LOW."""
        raise NotImplementedError

    def sample_pilot(self):
        """[tick] Measure the CP and store the result in `self.cp_high_mv` and
        `self.cp_low_mv` (ints, millivolts at the connector, e.g. 9000 / -12000). While the
        output is steady both hold the steady level. Returns nothing, so nothing allocates."""
        raise NotImplementedError

    # -- proximity pilot ----------------------------------------------------------------
    def read_pp_ohms(self):
        """[tick] PP-PE resistance in ohms; PP_OPEN_OHMS or more when no cable is inserted."""
        raise NotImplementedError

    # -- contactor ------------------------------------------------------------------
    def set_contactor(self, closed):
        """[tick] Energise (True) or de-energise (False) the contactor coil."""
        raise NotImplementedError

    def contactor_mirror_closed(self):
        """[tick] True when the mirror (auxiliary) contact says the main contacts are closed.
        Boards without a mirror contact return the commanded state (and say so in their
        board file), which disables welded-contact detection."""
        raise NotImplementedError

    # -- residual current (6 mA DC, IEC 62955) ---------------------------------------------
    def rcd_tripped(self):
        """[tick] True while the residual-current monitor signals a fault."""
        raise NotImplementedError

    def set_rcd_test(self, on):
        """[tick] Drive the monitor's test input (the self-test expects a trip within
        rcd_selftest_timeout_ms)."""
        raise NotImplementedError

    # -- temperature ----------------------------------------------------------------
    def temperature_dc(self):
        """[tick] Connector/relay temperature in tenths of a degree C, or None when the board
        has no sensor. Slow sensors return their last completed reading."""
        raise NotImplementedError

    # -- socket lock (optional) -----------------------------------------------------------
    def set_lock(self, locked):
        """Drive the socket lock motor. Boards without a lock do nothing."""

    def lock_confirmed(self):
        """True when the lock feedback says locked; boards without a lock return True."""
        return True

    # -- indication and supervision ----------------------------------------------------
    def set_led(self, pattern):
        """[tick] Show one of the LED_* patterns."""

    def feed_watchdog(self):
        """[tick] Feed the hardware watchdog (no-op where there is none)."""

    # -- buses -------------------------------------------------------------------------
    def meter_uart(self, baudrate=9600, parity="N"):
        """The RS-485 stream for the energy meter at `baudrate` 8`parity`1 ("N", "E", "O"):
        an object with write(buf), read(n), readinto(buf), any(), and set_de(on) for the
        driver-enable pin; None when the board has no meter."""
        return None

    # -- network ---------------------------------------------------------------------------
    def start_network(self, ssid, password, ntp_server):
        """Begin joining the Wi-Fi network `ssid` (non-blocking) and set the clock from
        `ntp_server` once connected. Boards on another network ignore it."""

    def network_step(self, now_ms):
        """Keep the network (and the clock) up: bounded, never waits; called every loop
        iteration before the backend link."""

    def id_tag_reader(self):
        """An RFID/NFC reader (firmware.auth.IdTagReader: non-blocking poll() -> tag or
        None), or None when the station has none."""
        return None

    # -- system --------------------------------------------------------------------------
    def storage_root(self):
        """Directory for persistent files ("/data" on the ESP32's littlefs)."""
        return "data"

    def reset_cause(self):
        """A short string: "power_on", "hard", "watchdog", "deep_sleep", "soft", "unknown"."""
        return "unknown"

    def last_crash(self):
        """The error text the previous run left when it crashed (kept across the reset by
        main.py), or None."""
        return None

    def clear_crash(self):
        """Forget the crash text (once INTERNAL_ERROR has been cleared by a person)."""

    def reset(self):
        """Restart the station (machine.reset() on the device)."""
        raise NotImplementedError

    def wall_time(self):
        """Seconds since 1970-01-01 UTC when the clock has been set (NTP), else None."""
        return None
