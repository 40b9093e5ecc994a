"""The station: the charge controller, the meter, sessions and the backend link on one board.

One loop iteration (`step()`) is the safety tick followed by one bounded slice of slow work:

    sample -> classify -> decide -> act          (safety_tick: board + charger, no allocation)
    meter bus -> events -> sessions -> backend   (service: each part bounded, never blocking)

The safety tick runs first in every iteration, and no slow part waits on the network or the
meter (MeterService.poll and MqttLink.step are non-blocking state machines), so a change of
the pilot is acted on within one iteration (TICK_MS) whatever the peers do.

Flash work is part of the slow work and bounded too (firmware/flashsched.py): one write per
iteration, none in the iteration whose tick moved the contactor (that one ends after the
tick), so neither a session end nor a burst of records makes an iteration long.

The station is also the backend's command target and the source of what the backend sees;
those parts live in mixins, one responsibility each:
    firmware/station_events.py   charger events and meter readings -> sessions, history
    firmware/station_report.py   status, telemetry, diagnostics, events, outbox records
    firmware/station_cmds.py     the commands (firmware.command_target.CommandTarget), idTags
"""
import gc

from firmware import config_store
from firmware import faults as _faults
from firmware import states as _states
from firmware.auth import Authorizer
from firmware.charger import Charger
from firmware.compat import mem_free, presize, ticks_add, ticks_diff
from firmware.config import Config
from firmware.counters import Counters
from firmware.events import EventRing
from firmware.faults import FaultSet
from firmware.flashsched import FlashBudget
from firmware.history import HK_BOOT, HK_STOP, History, cause_index, stop_index
from firmware.meter_service import MeterService
from firmware.safestate import SafeState
from firmware.session import SessionManager
from firmware.station_cmds import AVAILABILITY_FILE, Commands
from firmware.station_events import EventHandling
from firmware.station_report import Reporting, applied_ma, coded_ma  # noqa: F401 - API
from firmware.storage import Journal, StorageError, Store
from firmware.version import VERSION

TICK_MS = 10
CONFIG_FILE = config_store.FILE
OUTBOX_FILE = "outbox.jnl"

_RECOVER_WAIT_MS = 5000     # longest wait at boot for the meter to close a cut session
_RAM_OUTBOX_CAPACITY = 8    # records held in RAM when the flash failed at boot
_SAFE_RETRY_MS = 1000       # a failed write of the safety record is retried this often
# Collect between iterations once free heap falls below this. MicroPython's collector is not
# compacting: left to run only when an allocation fails, short-lived garbage interleaves
# with lasting objects and a 56 KB heap fragments until a few hundred bytes no longer find
# a block (measured on the stand-in: the bench session needed 76 KB that way, 66 KB with
# collections kept ahead of need). Here, after the safety tick and the slow work, the pause
# delays no reaction beyond the iteration it ends.
_GC_FREE_MIN = 16 * 1024


current = None              # the running station, for the REPL diagnostics (diag.py)


# Every attribute of Station, given first (compat.presize: its table's size is final
# before the objects it holds are made); tests/unit check the list is complete.
STATION_ATTRS = ("board", "link", "backend", "storage_error", "store", "flash", "config_error",
                 "pending_reboot", "cfg", "events", "faults", "charger", "ceiling_ma", "safe",
                 "_safe_retry_at", "counters", "boot_id", "sessions", "auth", "reader",
                 "meter", "_recover_until", "_held", "_retry_ev", "outbox", "_fallback",
                 "_undelivered", "_stop_fault", "_reboot_at", "_reboot_deadline",
                 "_reboot_now", "service_errors", "last_service_error", "_limit_left_ms",
                 "_limit_counted", "_last_status", "_tele_checked", "_tele_sent", "iterations",
                 "collections", "uptime_s", "_uptime_ms", "_uptime_at", "boot_report",
                 "history", "_ticked", "_tick_error", "_damage_seen")


class Station(EventHandling, Reporting, Commands):
    """The loop (safety tick, then one bounded slice of slow work) and its parts; the
    events, the backend's view and the commands are in the mixins (module docstring)."""

    def __init__(self, board, config=None, store=None):
        global current
        presize(self, STATION_ATTRS)
        self.board = board
        # Set before the first storage call: _storage_op reports through the link, which
        # is built further down (the fault itself reaches the outbox through the ring).
        self.link = None
        self.backend = None            # firmware.backend.api.Backend, by cfg["backend"]
        self.storage_error = None      # the flash failed at boot: degraded (see _ram_store)
        if store is None:
            try:
                store = Store(board.storage_root())
            except StorageError as e:
                store = self._ram_store(e)
        self.store = store
        # One flash write per loop iteration, none in the one that moves the contactor
        # (firmware/flashsched.py); unbounded until the loop runs.
        self.flash = FlashBudget(store)
        self.config_error = None
        self.pending_reboot = []       # keys changed since boot that apply after a reboot
        self.cfg = self._load_config(config)
        now = board.ticks_ms()

        self.events = EventRing(64)
        self.faults = FaultSet(self.events)
        self.charger = Charger(self.cfg, self.events, self.faults)
        # The hardware's rating (board file): nothing configured or commanded offers more.
        self.ceiling_ma = getattr(board, "rated_current_ma", None)
        if self.ceiling_ma is not None:
            self.charger.set_ceiling(self.ceiling_ma)
        # Inoperative is kept across resets (as OCPP's ChangeAvailability): a station taken
        # out of service must not come back charging after a power cut. A write of the flag
        # cut by a reset (only its temporary copy on flash) counts as inoperative.
        if self.store.exists(AVAILABILITY_FILE):
            self.charger.set_available(False)
        # Latched faults and the backend limit outlive every reset (firmware/safestate.py);
        # they are applied at the end of the constructor, before the first tick.
        self.safe = SafeState(self.store)
        self.safe.load()
        self._safe_retry_at = None
        # Outputs to the charger's initial state before the first sample: a pilot read while
        # nothing drives it would be taken for a fault.
        board.set_contactor(False)
        board.set_pilot(self.charger.duty_pm)
        self.counters = Counters.from_config(self.cfg, self.store)
        self._storage_op(self.counters.boot, now)
        self.boot_id = self.counters.boots
        self.sessions = SessionManager(self.cfg, self.store, self.counters, self.boot_id,
                                       wall_time=board.wall_time, budget=self.flash)
        self.auth = Authorizer(self.cfg, self.store)
        self.reader = board.id_tag_reader()

        uart = board.meter_uart(self.cfg["meter_baud"], self.cfg["meter_parity"])
        self.meter = None
        self._recover_until = None
        self._held = None              # the unplug event, waiting for the final reading
        self._retry_ev = None          # an event whose handling raised: handled once more
        if uart is not None:
            self.meter = MeterService(self.cfg, uart)
            expected = self.sessions.expected_register()
            if expected is not None:
                # The first reading is judged against the register billing last saw.
                self.meter.expect(expected[0], now, expected[1], expected[2])
            # A session cut by a reset is closed with the meter's register once it answers
            # (the energy after the last checkpoint counts); until then its events wait in
            # the ring, so a plug-in seen at boot does not start a new session first.
            if self.sessions.recovering:
                self._recover_until = ticks_add(now, _RECOVER_WAIT_MS)
        else:
            # No meter to read the register from: a session cut by a reset closes now with
            # its last checkpoint. With a meter it closes on the first reading (or once the
            # meter is declared stale), so the energy since the checkpoint is counted.
            self._storage_op(self.sessions.recover, now)

        # The outbox (records resent until the backend acknowledges them) is MQTT's: OCPP's
        # transaction messages carry the records (firmware/ocpp16/txlog.py), so an OCPP
        # station neither imports nor builds it (its journal stays on flash untouched).
        self.outbox = None
        if self.cfg["backend"] != "ocpp16":
            try:
                self.outbox = self._outbox(Journal(self.store, OUTBOX_FILE),
                                           self.cfg["outbox_capacity"])
            except (StorageError, ValueError, TypeError, KeyError) as e:
                # A damaged journal the flash cannot rewrite (full, read-only), a file it
                # cannot remove: this boot's records are held in RAM (a few: the heap is
                # small); the ones on flash stay there for a boot with a working flash.
                self.outbox = self._outbox(Journal(self._ram_store(e), OUTBOX_FILE),
                                           min(self.cfg["outbox_capacity"],
                                               _RAM_OUTBOX_CAPACITY))
        if self.cfg["wifi_ssid"]:
            board.start_network(self.cfg["wifi_ssid"], self.cfg["wifi_password"],
                                self.cfg["ntp_server"])
        # The backend plug-in (MQTT, OCPP 1.6J); `link` is the MqttLink, or None.
        from firmware import backend as _backend
        self.link, self.backend = _backend.build(self)
        self._fallback = False
        self._undelivered = []         # (kind, record) the outbox could not store yet
        self._stop_fault = None        # the last blocking fault raised: what a fault opening means

        self._reboot_at = None
        self._reboot_deadline = None
        self._reboot_now = False
        self.service_errors = 0
        self.last_service_error = None
        self._limit_left_ms = None     # backend limit expiry, counted down in ms
        self._limit_counted = now
        self._last_status = [None, None, None, None, None, None]
        self._tele_checked = now
        self._tele_sent = ticks_add(now, -(1 << 28))     # the first heartbeat goes out at once
        self.iterations = 0
        self.collections = 0           # collections the loop made (see _GC_FREE_MIN)
        self.uptime_s = 0              # counted: ticks_diff alone would wrap after 6 days
        self._uptime_ms = 0
        self._uptime_at = now
        self.boot_report = {"reset_cause": board.reset_cause(), "boot": self.boot_id,
                            "crash": board.last_crash(), "storage_error": self.storage_error}
        # The technician's log on flash (firmware/history.py): survives the reset.
        self.history = History(self.store, self.boot_id, board.wall_time, now)
        self.history.add(HK_BOOT, cause_index(self.boot_report["reset_cause"]),
                         1 if self.boot_report["crash"] else 0, now)
        if self.boot_report["crash"]:
            self.faults.raise_(_faults.INTERNAL_ERROR, now, present=False)
        if self.storage_error:
            # Present for as long as this boot runs on RAM: a reset loses what it holds.
            self.faults.raise_(_faults.STORAGE_ERROR, now, present=True)
        elif self.config_error:
            self.faults.raise_(_faults.STORAGE_ERROR, now, present=False)
        self._queue_event({"type": "boot", "reset_cause": self.boot_report["reset_cause"],
                           "boot": self.boot_id, "version": VERSION, "crash": self.boot_report["crash"],
                           "config_error": self.config_error,
                           "storage_error": self.storage_error})
        self._restore_safe(now)
        # Records finished before the reset and not yet acknowledged go out again (a few
        # per loop iteration from here on: see _offer_sessions).
        # From here on (latches applied) the safety tick also runs between flash operations
        # (firmware/storage.py: an erase blocks for tens of ms, a session end makes a dozen).
        self._ticked = now
        self._tick_error = None
        self.store.pause = self._flash_pause
        self._damage_seen = 0
        self._check_damage(now)
        current = self

    # -- configuration ----------------------------------------------------------------------
    def _load_config(self, config):
        if isinstance(config, Config):
            return config
        # An unusable file is kept for a technician; the last valid copy, or the safety
        # limits at their minimum, apply meanwhile (never the 32 A default).
        cfg, self.config_error = config_store.load(self.store)
        if config:
            cfg.update(config)
        return cfg

    def _outbox(self, journal, capacity):
        from firmware.outbox import Outbox
        return Outbox(journal, capacity=capacity, window=self.cfg["outbox_window"],
                      resend_ms=self.cfg["outbox_resend_s"] * 1000,
                      on_ack=self._on_ack, on_overflow=self._on_overflow)

    def _ram_store(self, e):
        from firmware.ramfs import RamFs
        why = e.args[0] if e.args else type(e).__name__
        self.storage_error = why if self.storage_error is None else self.storage_error
        return Store("/ram", RamFs())

    # -- the safety record (firmware/safestate.py) ---------------------------------------------
    def _restore_safe(self, now):
        # After the crash report above: a restored INTERNAL_ERROR must not swallow the
        # record of a new crash. Still before the first tick, so before any closing.
        if self.safe.damaged:
            self.faults.raise_(_faults.STORAGE_ERROR, now, present=False)
            self._queue_event({"type": "storage_error", "error": self.safe.damaged})
        left = self.safe.restore(self.charger, now, self.board.wall_time())
        if left == 0:
            self._queue_event({"type": "limit_expired"})
            left = None
        self._limit_left_ms = left
        self._limit_counted = now

    def _limit_remaining(self, now):
        if self._limit_left_ms is None:
            return None
        return self._limit_left_ms - ticks_diff(now, self._limit_counted)

    def _save_safe(self, now, force=False):
        """Write the safety record (when it changed, or `force`). A failure is a
        STORAGE_ERROR and is retried every _SAFE_RETRY_MS, not every tick."""
        if not force and self._safe_retry_at is not None \
                and ticks_diff(now, self._safe_retry_at) < 0:
            return
        try:
            self.safe.save(self.faults, self.charger, self._limit_remaining(now),
                           self.board.wall_time())
            self._safe_retry_at = None
        except StorageError as e:
            self._safe_retry_at = ticks_add(now, _SAFE_RETRY_MS)
            self.faults.raise_(_faults.STORAGE_ERROR, now, present=False)
            self._queue_event({"type": "storage_error", "error": str(e)})

    def _storage_op(self, fn, *args):
        try:
            return fn(*args)
        except StorageError as e:
            self.faults.raise_(_faults.STORAGE_ERROR, self.board.ticks_ms(), present=False)
            self._queue_event({"type": "storage_error", "error": str(e)})
            return None

    # -- the loop ---------------------------------------------------------------------------
    def safety_tick(self, now):
        """Sample, classify, decide, act. Allocates nothing; every board call here is a
        [tick] method of firmware.board.Board."""
        b = self.board
        c = self.charger
        self._ticked = now
        self._sense()
        c.tick(now)
        if c.pilot_unconfirmed():
            # A new pilot level needs a second equal reading: take it now rather than a
            # tick later, so an unplug or C->B opens within one tick, not two.
            self._sense()
            c.tick(b.ticks_ms())
        b.set_contactor(c.contactor)
        b.set_pilot(c.duty_pm)
        b.set_rcd_test(c.rcd_test)
        b.set_lock(c.lock)
        b.set_led(c.led)
        b.feed_watchdog()

    def _flash_pause(self):
        # Store.pause: a flash operation has just finished. The safety tick runs when one
        # is due, so a pilot change waits for one flash operation, not for all the slow
        # work of an iteration. An error in it must not pass for a storage error (the
        # storage layer turns OSError into StorageError): step() raises it again.
        now = self.board.ticks_ms()
        if ticks_diff(now, self._ticked) < TICK_MS or self._tick_error is not None:
            return
        try:
            self.safety_tick(now)
        except BaseException as e:  # noqa: BLE001 - re-raised by step()
            self._tick_error = e
            raise

    def _may_stall(self):
        # Work that holds the CPU for long (a TLS handshake) runs only with the contactor
        # open: then no Annex A reaction is owed within the tick (docs/architecture.md).
        return not self.charger.contactor

    def _sense(self):
        b = self.board
        c = self.charger
        b.sample_pilot()
        c.cp_high_mv = b.cp_high_mv
        c.cp_low_mv = b.cp_low_mv
        c.pp_ohms = b.read_pp_ohms()
        c.rcd_tripped = b.rcd_tripped()
        c.mirror_closed = b.contactor_mirror_closed()
        c.temp_dc = b.temperature_dc()
        c.lock_ok = b.lock_confirmed()

    def step(self):
        now = self.board.ticks_ms()
        closed = self.charger.contactor
        self.safety_tick(now)
        self.iterations += 1
        # The iteration that moved the contactor ends here (the safety record aside): its
        # slow work (the session end, a dozen flash writes) waits for the next one, so that
        # the reaction is never followed by a stall (docs/performance.md, loop_stall_ms_max).
        moved = self.charger.contactor != closed
        self.flash.begin(moved)
        if self.safe.due(self.faults, self.charger):
            # A latch or limit that changed in this tick goes to flash before anything
            # else: a reset from here on finds it (due() compares ints, no allocation).
            try:
                self._save_safe(now)
            except Exception as e:  # noqa: BLE001 - out of memory, say: retried next time
                self._service_failed(now, e)
        if not moved:
            try:
                self._service(now)
            except Exception as e:  # noqa: BLE001 - see _service_failed
                self._service_failed(now, e)
        if self._tick_error is not None:
            raise self._tick_error       # a safety tick failed between flash operations
        if not moved and mem_free() < _GC_FREE_MIN:
            gc.collect()
            self.collections += 1
        # Outside the guard: a reboot is the remedy for slow work that fails every time.
        if self._reboot_at is not None:
            self._reboot_due(now)
        if self._reboot_now:
            self.shutdown("reboot")
            self.board.reset()

    def _service_failed(self, now, e):
        # Slow work (meter, sessions, backend) that fails, out of memory included, must not
        # take the safety tick down with it: count it, make it visible, carry on. A failure
        # of the safety tick itself still ends the loop (main.py opens the contactor).
        # Out of memory the report itself may fail to build: the count and the fault
        # (neither allocates) come first, the text and the event only if they can be made.
        self.service_errors += 1
        gc.collect()
        self.collections += 1
        raised = self.faults.raise_(_faults.INTERNAL_ERROR, now, present=False)
        try:
            self.last_service_error = "%s: %s" % (type(e).__name__, e)
            if raised:
                self._queue_event({"type": "internal_error", "error": self.last_service_error})
        except Exception:  # noqa: BLE001 - the fault record still goes out
            self.last_service_error = type(e).__name__

    def run(self):
        board = self.board
        if self.backend is not None:
            try:
                # OCPP's WebSocket still resolves its host name by a blocking lookup (once,
                # cached): before charging starts. MQTT's runs off the loop
                # (firmware/resolver.py) and does nothing here.
                self.backend.resolve()
            except Exception as e:      # noqa: BLE001 - retried by the backend's own steps
                self._queue_event({"type": "dns_error", "error": str(e)})
        while True:
            start = board.ticks_ms()
            self.step()
            spent = ticks_diff(board.ticks_ms(), start)
            if spent < TICK_MS:
                board.sleep_ms(TICK_MS - spent)

    # -- slow work ----------------------------------------------------------------------------
    def _service(self, now):
        if self.meter is not None:
            self._poll_meter(now)
        self._drain_events(now)
        self._uptime_ms += ticks_diff(now, self._uptime_at)
        self._uptime_at = now
        if self._uptime_ms >= 1000:
            self.uptime_s += self._uptime_ms // 1000
            self._uptime_ms %= 1000
        self._storage_op(self.sessions.tick, now)
        self._check_damage(now)
        if self.flash.free():
            self.history.tick(now)
        if self._undelivered and self.flash.free():
            kind, rec = self._undelivered.pop(0)
            self._deliver(kind, rec)
        self._offer_sessions()
        self.board.network_step(now)
        if self.backend is not None:
            self._comms(now)
            self.backend.step(now)
        ob = self.outbox
        if ob is not None:
            if ob.overflow_active and len(ob) <= ob.capacity // 2:
                ob.clear_overflow()               # reported; the backend is catching up
            self._fault_flag(_faults.OUTBOX_OVERFLOW, ob.overflow_active, now)
        if self._limit_left_ms is not None:
            self._limit_expiry(now)

    # -- shutdown ---------------------------------------------------------------------------
    def shutdown(self, reason):
        """Open the contactor, close the running session with `reason` (its record is on
        flash before the reset), save the counters and say goodbye."""
        b = self.board
        b.set_contactor(False)
        b.set_pilot(1000)
        now = b.ticks_ms()
        self.flash.unbounded()         # everything pending goes to flash before the reset
        if self.safe.due(self.faults, self.charger) or self._limit_left_ms is not None:
            # The limit's remaining time too: it runs on from there after the reboot.
            self._save_safe(now, True)
        # A session whose EV has left (waiting for its final reading) ends as it ended.
        self._storage_op(self.sessions.end, now, reason)
        self._storage_op(self.sessions.flush)
        self._storage_op(self.counters.save, now)
        self.history.add(HK_STOP, stop_index(reason), 0, now)
        self.history.flush(now)
        if self.backend is not None:
            self.backend.close(reason)

    def interrupted(self):
        """Ctrl-C stopped the loop and main.py opened the contactor behind the charger's
        back: the opening counts in the wear counters (under load when the EV was drawing:
        the meter's power, else a closed contactor in C/D counts as loaded), and the log and
        the counters go to flash now, before anything resets the station."""
        now = self.board.ticks_ms()
        self.flash.unbounded()
        self._storage_op(self.sessions.flush)
        c = self.charger
        if c.contactor:
            m = self.meter
            power = m.power_w if m is not None and m.readings and not m.stale else None
            if power is None and c.state in (_states.STATE_C2, _states.STATE_D2):
                power = self.counters.load_threshold_w
            self.counters.contactor_opened(power)
        self.history.add(HK_STOP, stop_index("interrupted"), 0, now)
        self.history.flush(now)
        self._storage_op(self.counters.save, now)

