"""The station: the charge controller, the meter, sessions and the backend link on one board.

One loop iteration (`step()`) is the safety tick followed by one bounded slice of slow work:

    sample -> classify -> decide -> act          (safety_tick: board + charger, no allocation)
    meter bus -> events -> sessions -> backend   (service: each part bounded, never blocking)

The safety tick runs first in every iteration, and no slow part waits on the network or the
meter (MeterService.poll and MqttLink.step are non-blocking state machines), so a change of
the pilot is acted on within one iteration (TICK_MS) whatever the peers do.

The station is also the backend's command target (firmware.commands.CommandTarget) and the
source of what the backend sees: retained status, telemetry, events and the outbox records.
"""
import gc

from firmware import commands as _cmd
from firmware import config_store
from firmware import faults as _faults
from firmware import states as _states
from firmware.auth import ACCEPTED_FREE, ASK_BACKEND, SOURCE_BACKEND, SOURCE_READER, Authorizer
from firmware.charger import (
    CONTACTOR_EV_STOPPED, CONTACTOR_FAULT, CONTACTOR_PWM_OFF, CONTACTOR_REASON_NAMES,
    CONTACTOR_UNPLUGGED, LIMIT_NAMES, Charger)
from firmware.compat import mem_free, ticks_add, ticks_diff
from firmware.config import Config, is_hardware, needs_reboot
from firmware.counters import Counters
from firmware.events import (
    EV_CONTACTOR, EV_FAULT_CLEARED, EV_FAULT_RAISED, EV_OFFER, EV_SELFTEST, EV_STATE,
    EV_WAKEUP, EventRing, KIND_NAMES)
from firmware.faults import FaultSet
from firmware.flashsched import FlashBudget
from firmware.history import HK_BOOT, HK_STOP, History, cause_index, stop_index
from firmware.meter_service import FAILED, NEW_READING, STALE_CHANGED, MeterService
from firmware.meters import load_map
from firmware.outbox import KIND_FAULT, KIND_SESSION, KIND_SESSION_START, Outbox, OutboxError
from firmware.pilot import DUTY_PAUSED, CURRENT_MIN_MA, current_for_duty, duty_for_current
from firmware.safestate import SafeState
from firmware.session import (
    FAULT_PREFIX, LIMIT_PREFIX, REASON_EV_STOPPED, REASON_EV_UNPLUGGED, REASON_INOPERATIVE,
    REASON_REBOOT, REASON_REMOTE_STOP, SessionManager)
from firmware.storage import Journal, StorageError, Store
from firmware.version import VERSION

TICK_MS = 10
CONFIG_FILE = config_store.FILE
OUTBOX_FILE = "outbox.jnl"
AVAILABILITY_FILE = "inoperative"   # present: the operator took the station out of service

_EVENTS_PER_STEP = 8        # charger events handled per iteration (the ring holds 64)
_REBOOT_GRACE_MS = 1000     # the reply goes out before the restart
_REBOOT_FORCE_MS = 7000     # a charging EV gets pwm_off_open_ms to stop first
_DETAIL_CHARS = 600          # crash text carried in an INTERNAL_ERROR fault record
_SESSIONS_PER_STEP = 1       # finished session records moved to the outbox per iteration
                             # (one flash write each: firmware/flashsched.py)
_TELEMETRY_CHECK_MS = 1000  # how often telemetry is considered (the link's on-change gap)
_RECOVER_WAIT_MS = 5000     # longest wait at boot for the meter to close a cut session
_FINAL_READING_WAIT_MS = 3000  # longest wait for a session's final meter reading
_UNDELIVERED_MAX = 16       # records the outbox could not store, retried from RAM
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


def applied_ma(duty_pm):
    """The current the applied duty tells the EV (IEC 61851-1 Table A.8), 0 when no PWM:
    what the station offers, not the target it was computed from (52000 mA has no duty of
    its own: the PWM codes 51 A)."""
    if 0 < duty_pm < DUTY_PAUSED:
        ma = current_for_duty(duty_pm)
        return ma if ma > 0 else 0
    return 0


def coded_ma(target_ma):
    """The current a duty for `target_ma` codes (0 below 6 A: no duty, a pause)."""
    if target_ma < CURRENT_MIN_MA:
        return 0
    return current_for_duty(duty_for_current(target_ma))


class Station:
    def __init__(self, board, config=None, store=None):
        global current
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

        try:
            self.outbox = self._outbox(Journal(self.store, OUTBOX_FILE),
                                       self.cfg["outbox_capacity"])
        except (StorageError, ValueError, TypeError, KeyError) as e:
            # A damaged journal the flash cannot rewrite (full, read-only), a file it cannot
            # remove: this boot's records are held in RAM (a few: the heap is small); the
            # ones on flash stay there for a boot with a working flash.
            self.outbox = self._outbox(Journal(self._ram_store(e), OUTBOX_FILE),
                                       min(self.cfg["outbox_capacity"], _RAM_OUTBOX_CAPACITY))
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

    def storage_damage(self):
        """Damage found on flash and writes that failed, counted since boot: every one is
        also a STORAGE_ERROR and a storage_damage event (docs/faults.md)."""
        d = self.sessions.damage()
        ob = self.outbox
        d["outbox_corrupt_entries"] = ob.corrupt_entries
        d["outbox_orphans_removed"] = ob.orphans_removed
        d["outbox_journal_damaged_bytes"] = getattr(ob.journal, "damaged_bytes_total", 0)
        d["allow_list_unreadable"] = 1 if self.auth.allow_list.error else 0
        return d

    def _damage_total(self):
        ob = self.outbox
        return (self.sessions.damage_total() + ob.corrupt_entries + ob.orphans_removed
                + getattr(ob.journal, "damaged_bytes_total", 0)
                + (1 if self.auth.allow_list.error else 0))

    def _check_damage(self, now):
        # Compared as one int per iteration; the report is built only when it grows.
        total = self._damage_total()
        if total == self._damage_seen:
            return
        self._damage_seen = total
        self.faults.raise_(_faults.STORAGE_ERROR, now, present=False)
        ev = self.storage_damage()
        ev["type"] = "storage_damage"
        self._queue_event(ev)

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
        if self.outbox.overflow_active and len(self.outbox) <= self.outbox.capacity // 2:
            self.outbox.clear_overflow()          # reported; the backend is catching up
        self._fault_flag(_faults.OUTBOX_OVERFLOW, self.outbox.overflow_active, now)
        if self._limit_left_ms is not None:
            self._limit_expiry(now)

    def _drain_events(self, now):
        # Charger events (and idTags read at the station) reach the sessions in order. Two
        # holds pause them, never the rest of the loop: a cut session waiting for the
        # meter at boot, and an unplug waiting for its final meter reading.
        if self._recover_until is not None and not self._recovered(now):
            return
        if self._held is not None and not self._release_held(now):
            return
        if self._retry_ev is not None:
            # Taken from the ring already, so a failure (out of memory, say) would lose it:
            # one more try, in order; a second failure drops it (counted as a service error).
            ev = self._retry_ev
            self._retry_ev = None
            self._on_event(ev)
        for _ in range(_EVENTS_PER_STEP):
            if not self.flash.free():
                break               # an event wrote (a fault record): the rest next time
            ev = self.events.pop()
            if ev is None:
                break
            if (ev[1] == EV_STATE and ev[2] == _states.STATE_A and self.meter is not None
                    and not self.meter.stale and self.sessions.active is not None):
                # The session closes on a register read after the contactor opened, so
                # the energy of its last poll interval is billed too: hold the unplug (and
                # what follows it) until that reading is in.
                self._held = ev
                # The session ended when the EV left: what comes later (a stop, a reboot,
                # a power cut) does not rewrite its end.
                self._storage_op(self.sessions.unplugged, ev[0])
                self._held_cycle = self.meter.request_reading(True)
                self._held_until = ticks_add(now, _FINAL_READING_WAIT_MS)
                return
            self._handle(ev)
        if self.reader is not None:
            tag = self.reader.poll()
            if tag is not None:
                self.present_id_tag(tag, now)

    def _poll_meter(self, now):
        m = self.meter
        changed = m.poll(now)
        c = self.charger
        self._fault_flag(_faults.METER_STALE, m.stale, now)
        self._fault_flag(_faults.METER_IMPLAUSIBLE, m.implausible, now)
        # Over-current is judged only on currents the meter has just confirmed.
        c.phase_ma_valid = m.readings > 0 and not m.stale
        if self.sessions.serial_wanted:
            self.sessions.serial_wanted = False
            m.request_serial()
        if c.contactor:
            # The contactor closed (a new EV, free mode) while a session still waits for
            # its final reading, or a session cut by a reset for the register at boot:
            # the next reading holds the new energy. The waiting one ends estimated.
            if self._held is not None:
                self._release_now()
            if self.sessions.recovering:
                self._storage_op(self.sessions.recover, now)
        if changed & FAILED:
            self.sessions.on_meter(now, None, None, False)
        if changed & STALE_CHANGED and m.stale:
            self._storage_op(self.sessions.recover, now)
        if changed & NEW_READING:
            cur = m.current_ma
            phase = c.phase_ma
            phase[0] = cur[0]
            phase[1] = cur[1]
            phase[2] = cur[2]
            if m.implausible:
                self.sessions.on_rejected(now)
            else:
                self._storage_op(self.sessions.on_meter, now, m.import_wh, m.power_w, True,
                                 m.base_wh, m.sampled_ms, c.contactor, m.serial)

    def _release_held(self, now):
        # Until a register read after the contactor opened is in (a failed cycle asks
        # for another), the meter is stale, or the documented limit has passed.
        m = self.meter
        if self.sessions.awaiting_final and not m.stale \
                and ticks_diff(now, self._held_until) < 0:
            if m.cycle_finished(self._held_cycle):
                self._held_cycle = m.request_reading(True)
            return False
        self._release_now()
        return True

    def _release_now(self):
        ev = self._held
        self._held = None
        self._handle(ev)

    def _recovered(self, now):
        # The first valid meter reading recovers (SessionManager.on_meter); a meter that
        # does not answer leaves the checkpoint's values.
        if self.meter.stale or ticks_diff(now, self._recover_until) >= 0:
            self._storage_op(self.sessions.recover, now)
        if self.sessions.recovering:
            return False
        self._recover_until = None
        return True

    def _fault_flag(self, code, on, now):
        if on:
            if not self.faults.is_present(code):
                self.faults.raise_(code, now)
        elif self.faults.is_present(code):
            self.faults.clear(code, now)

    def _handle(self, ev):
        self._retry_ev = ev
        self._on_event(ev)
        self._retry_ev = None

    def _on_event(self, ev):
        t, kind, a, b = ev
        s = self.sessions
        self.history.add(kind, a, b, self.board.ticks_ms(), t)
        if kind == EV_STATE:
            s.on_state(t, a)
            if a == _states.STATE_A:
                pass
            elif not _states.ev_connected(b) and _states.ev_connected(a) and self.auth.autostart():
                s.set_id_tag(None, t, ACCEPTED_FREE)
            self._queue_event({"type": "state", "state": _states.NAMES[a],
                               "from": _states.NAMES[b], "t_ms": t})
        elif kind == EV_CONTACTOR:
            s.on_contactor(t, a, None if a else self._stop_cause(b))
            self._queue_event({"type": "contactor", "closed": bool(a),
                               "reason": CONTACTOR_REASON_NAMES[b], "t_ms": t})
        elif kind == EV_FAULT_RAISED or kind == EV_FAULT_CLEARED:
            f = _faults.by_code(a)
            raised = kind == EV_FAULT_RAISED
            if raised:
                if f.blocking:
                    self._stop_fault = f.name
                s.on_fault(t, f.name)
            else:
                s.on_fault_cleared(t, f.name)
            rec = {"fault": f.name, "raised": raised, "ocpp": f.ocpp, "text": f.text,
                   "t_ms": t, "boot": self.boot_id}
            if a == _faults.INTERNAL_ERROR:
                if raised:
                    # What went wrong, for whoever reads the record: the crash before this
                    # boot, or the background task that failed.
                    detail = self.last_service_error or self.boot_report["crash"] or ""
                    rec["detail"] = detail[-_DETAIL_CHARS:]
                elif b:
                    self.board.clear_crash()     # read and cleared by a person
            # UTC, or null: the clock was not set (t_ms and boot order it then).
            rec["time"] = self.board.wall_time()
            # Fault events must reach the backend: outbox (persisted, resent until acked).
            self._deliver(KIND_FAULT, rec)
        elif kind == EV_OFFER:
            self._queue_event({"type": "offer", "offered_ma": coded_ma(a),
                               "limit": LIMIT_NAMES[b], "t_ms": t})
        elif kind == EV_SELFTEST:
            self._queue_event({"type": "selftest", "passed": bool(a), "took_ms": b, "t_ms": t})
        elif kind == EV_WAKEUP:
            self._queue_event({"type": "wakeup", "active": bool(a), "t_ms": t})
        else:
            self._queue_event({"type": KIND_NAMES[kind], "a": a, "b": b, "t_ms": t})
        if self.backend is not None:
            self.backend.on_event(ev)

    def _stop_cause(self, why):
        # What a contactor opening means for the session's stop reason (docs/sessions.md).
        # A stop the backend or the station asked for is the session's own (stop_reason);
        # here: the EV, a fault, or the limits that turned the PWM off.
        c = self.charger
        if why == CONTACTOR_UNPLUGGED:
            return REASON_EV_UNPLUGGED
        if why == CONTACTOR_FAULT:
            return FAULT_PREFIX + (self._stop_fault or "unknown")
        if why == CONTACTOR_EV_STOPPED or why == CONTACTOR_PWM_OFF:
            if not c.available:
                return REASON_INOPERATIVE       # the operator took the station out of service
            if c.offered_ma == 0 and not c.paused:
                # The limits in force left nothing to offer (x1): backend, comms, thermal.
                return LIMIT_PREFIX + LIMIT_NAMES[c.limit_reason]
            if why == CONTACTOR_EV_STOPPED:
                return REASON_EV_STOPPED
        return CONTACTOR_REASON_NAMES[why]

    def _offer_sessions(self):
        # Finished session records move from the session journal to the outbox a few at a
        # time (a record is ~1.5 KB as a dict) and only while the outbox holds fewer session
        # records than it can: it never has to drop one session to take another. The rest
        # wait on flash in the session journal. Without a backend they wait there too, and
        # go out at the first boot with one.
        if self.link is None or not self.flash.free():
            return
        # (A start record does not count: its end record takes its place.)
        held = [r.id for r in self.outbox.records() if r.kind == KIND_SESSION]
        room = self.outbox.capacity - len(held)
        if room <= 0:
            return
        # Start records first (the backend learns of a session when it is authorized),
        # only into free places: an end record takes its start's place later.
        for rec in self.sessions.pop_started():
            if len(self.outbox) >= self.outbox.capacity or not self.flash.free():
                break
            self._deliver(KIND_SESSION_START, rec)
            self.sessions.start_delivered(rec["id"])
        if not self.flash.free():
            return
        for rec in self.sessions.pop_completed(min(room, _SESSIONS_PER_STEP)):
            if rec["id"] not in held:
                self._deliver(KIND_SESSION, rec)

    def _on_overflow(self, kind, record_id):
        if kind == KIND_SESSION:
            # Only a smaller outbox_capacity after a reboot gets here: the record is still
            # pending in the session journal; offer the journal's records again.
            self.sessions.redeliver()

    def _deliver(self, kind, rec):
        # Without a backend nothing would ever acknowledge a record: session records then
        # stay pending in the session journal (and go out at the first boot with a
        # backend); fault events stay in the fault history and counters.
        if self.link is None:
            return
        try:
            self.outbox.put(kind, rec)
        except StorageError as e:
            # pop_completed() handed the record out once: dropping it here would hold it
            # back until the next boot. Kept in RAM and retried, one per iteration; past
            # _UNDELIVERED_MAX the oldest goes (a session record stays pending on flash).
            if len(self._undelivered) >= _UNDELIVERED_MAX:
                self._undelivered.pop(0)
            self._undelivered.append((kind, rec))
            self.faults.raise_(_faults.STORAGE_ERROR, self.board.ticks_ms(), present=False)
            self._queue_event({"type": "storage_error", "error": str(e)})
        except OutboxError as e:
            # A record the outbox refuses (over its size limit) cannot go out; a session
            # record stays pending in the session journal. Made visible, never silent.
            self.last_service_error = str(e)
            self.faults.raise_(_faults.INTERNAL_ERROR, self.board.ticks_ms(), present=False)
            self._queue_event({"type": "record_rejected", "kind": kind, "error": str(e)})

    def _queue_event(self, fields):
        if self.link is not None:
            self.link.publish_event(fields)

    def _on_ack(self, kind, record_id):
        if kind == KIND_SESSION:
            self._storage_op(self.sessions.acknowledged, record_id)

    # -- backend reporting --------------------------------------------------------------------
    def _comms(self, now):
        lost = self.backend.comms_lost(now)
        if lost and not self._fallback:
            self._fallback = True
            self.charger.set_comms_fallback(self.cfg["comms_fallback_ma"])
        elif not lost and self._fallback:
            # The link's link_up event tells the backend how long the fallback applied.
            self._fallback = False
            self.charger.clear_comms_fallback()
        self._fault_flag(_faults.BACKEND_OFFLINE, lost, now)

    def _report(self, now):
        # Nothing here may build a message per loop iteration: compare first, build on change.
        c = self.charger
        last = self._last_status
        by_limit = self._paused_by_limit()
        if (c.state != last[0] or self.faults.active != last[1] or c.available != last[2]
                or c.offered_ma != last[3] or c.contactor != last[4] or by_limit != last[5]):
            last[0] = c.state
            last[1] = self.faults.active
            last[2] = c.available
            last[3] = c.offered_ma
            last[4] = c.contactor
            last[5] = by_limit
            self.link.publish_status(self.status())
        if ticks_diff(now, self._tele_checked) < _TELEMETRY_CHECK_MS:
            return
        self._tele_checked = now
        if self.sessions.active is not None:
            # In a session: the link's interval and power deadband decide.
            if self.link.publish_telemetry(self.telemetry(), now_ms=now):
                self._tele_sent = now
        elif self.link.online and (ticks_diff(now, self._tele_sent)
                                   >= self.cfg["telemetry_idle_interval_s"] * 1000):
            # Idle: the retained status carries every change; telemetry is a rare heartbeat
            # (on a paid cellular link an idle station costs little), never stored offline.
            self.link.publish_telemetry(self.telemetry(), force=True, now_ms=now)
            self._tele_sent = now

    def _paused_by_limit(self):
        # The limits in force (backend, comms fallback, thermal) leave less than the 6 A a
        # duty can offer: the charger offers nothing until they rise (IEC 61851-1, x1).
        # True once the charger has acted on it (offered_ma 0), so a status never pairs it
        # with the old offer.
        c = self.charger
        return (c.offered_ma == 0 and not c.paused
                and c.effective_limit_ma() < CURRENT_MIN_MA)

    def status(self):
        c = self.charger
        active = self.sessions.active
        return {
            "state": _states.NAMES[c.state],
            "available": c.available,
            "authorized": c.authorized,
            "paused": c.paused,
            "paused_by_limit": self._paused_by_limit(),
            "offered_ma": applied_ma(c.duty_pm),
            "limit": LIMIT_NAMES[c.limit_reason],
            "contactor": c.contactor,
            "faults": self.faults.active_names(),
            "session": active["id"] if active else None,
            "boot": self.boot_id,
            "version": VERSION,
        }

    def telemetry(self):
        c = self.charger
        out = {"state": _states.NAMES[c.state], "offered_ma": applied_ma(c.duty_pm),
               "contactor": c.contactor, "temp_dc": c.temp_dc}
        m = self.meter
        if m is not None:
            out["power_w"] = m.power_w
            out["import_wh"] = m.import_wh
            out["current_ma"] = list(m.current_ma)
            out["voltage_dv"] = list(m.voltage_dv)
            out["meter_stale"] = m.stale
        active = self.sessions.active
        if active:
            out["session"] = active["id"]
            out["session_wh"] = active.get("energy_wh")
        return out

    def diagnostics(self):
        c = self.charger
        out = {"status": self.status(), "boot": self.boot_report,
               "uptime_s": self.uptime_s,
               "iterations": self.iterations,
               "pilot": {"high_mv": c.cp_high_mv, "low_mv": c.cp_low_mv,
                         "duty_pm": c.duty_pm, "pp_ohms": c.pp_ohms},
               "limit_ma": c.effective_limit_ma(),
               "fault_history": [(t, _faults.by_code(code).name, raised)
                                 for t, code, raised in self.faults.history(8)],
               "counters": self.counters.values(),
               "outbox": self.outbox.stats(),
               "storage_damage": self.storage_damage(),
               "config_error": self.config_error,
               "service_errors": self.service_errors,
               "collections": self.collections,
               "last_service_error": self.last_service_error}
        if self.meter is not None:
            out["meter"] = self.meter.stats()
        if self.link is not None:
            out["mqtt"] = self.link.stats()
        elif self.backend is not None:
            out["backend"] = self.backend.stats()
        if self.sessions.error:
            out["session_error"] = self.sessions.error
        return out

    # -- commands (firmware.commands.CommandTarget) ----------------------------------------------
    def cmd_start(self, now_ms, id_tag=None, connector_id=None):
        # connector_id is checked by the dispatcher (this station has one connector).
        c = self.charger
        if not c.available:
            return _cmd.INOPERATIVE, "station is inoperative"
        if self._reboot_at is not None:
            # The reboot paused charging so the EV stops first; resuming would have the
            # reset cut a charging EV under load.
            return _cmd.BUSY, "reboot scheduled"
        if id_tag is not None:
            # OCPP RemoteStartTransaction: the backend names who pays; the EV may plug in
            # afterwards (the session starts at the authorization).
            try:
                ok, why = self.auth.request(id_tag, True, SOURCE_BACKEND)
            except ValueError as e:
                return _cmd.PROPERTY_CONSTRAINT, str(e)
            err = self._authorize(id_tag, ok, why, now_ms)
            if err is None and c.paused:
                c.resume()
            return err
        if not _states.ev_connected(c.state):
            return _cmd.NO_EV, "no EV connected"
        if c.paused:
            c.resume()
            return None
        if c.authorized:
            return _cmd.ALREADY, "already started"
        # A remote start authorizes the connected EV (OCPP RemoteStartTransaction).
        c.authorize(True)
        self.sessions.set_id_tag(None, now_ms, SOURCE_BACKEND)
        return None

    def cmd_stop(self, now_ms):
        c = self.charger
        if self.sessions.active is None:
            return _cmd.NO_SESSION, "no session"
        if c.paused:
            return _cmd.ALREADY, "already stopped"
        c.pause()
        self.sessions.stop_reason(REASON_REMOTE_STOP)
        return None

    def cmd_authorize(self, id_tag, now_ms):
        try:
            ok, why = self.auth.request(id_tag, True, SOURCE_BACKEND)
        except ValueError as e:
            return _cmd.PROPERTY_CONSTRAINT, str(e)
        return self._authorize(id_tag, ok, why, now_ms)

    def present_id_tag(self, id_tag, now_ms):
        """An idTag read at the station (the board's RFID reader). Returns (accepted,
        reason) and tells the backend, which decides in backend mode while online."""
        online = self.backend is not None and self.backend.online
        try:
            ok, why = self.auth.request(id_tag, online, SOURCE_READER)
        except ValueError as e:
            ok, why = False, str(e)
        if why == ASK_BACKEND:
            self.backend.id_tag(id_tag, now_ms)
            return False, why
        err = self._authorize(id_tag, ok, why, now_ms) if ok else None
        if err:
            ok, why = False, err[1]
        self._queue_event({"type": "id_tag", "id_tag": id_tag, "accepted": ok, "reason": why})
        return ok, why

    def _authorize(self, id_tag, ok, why, now_ms):
        if not ok:
            return _cmd.NOT_AUTHORIZED, "not authorized: %s" % why
        if not self.charger.available:
            return _cmd.INOPERATIVE, "station is inoperative"
        active = self.sessions.active
        holder = active["id_tag"] if active is not None else None
        if holder is not None and self.charger.authorized:
            # The card that started the session pays for it: another card presented at a
            # station in use must not take the session (and its bill) over.
            if id_tag.upper() != holder.upper():
                return _cmd.OCCUPIED, "the session belongs to another idTag"
            return None
        self.charger.authorize(True)
        self.sessions.set_id_tag(id_tag, now_ms, why)
        return None

    def cmd_set_limit(self, limit_ma, expires_s, now_ms):
        # Under 6 A is a pause (the charger's rule, IEC 61851-1: PWM off, x1), lifted by a
        # limit of 6 A or more or by the expiry.
        try:
            self.charger.set_backend_limit(limit_ma)
        except ValueError as e:
            return _cmd.PROPERTY_CONSTRAINT, str(e)
        # The station counts the expiry down itself: a week does not fit a ticks deadline.
        self._limit_left_ms = None if expires_s is None else expires_s * 1000
        self._limit_counted = now_ms
        # On flash before the reply: the limit holds across resets (a flash failure is a
        # STORAGE_ERROR; the limit still applies, and the write is retried).
        self._save_safe(now_ms, True)
        return None

    def _limit_expiry(self, now):
        self._limit_left_ms -= ticks_diff(now, self._limit_counted)
        self._limit_counted = now
        if self._limit_left_ms <= 0:
            self._limit_left_ms = None
            self.charger.clear_backend_limit()
            self._queue_event({"type": "limit_expired"})

    def cmd_set_availability(self, operative, now_ms):
        # Stored first: a change that cannot be kept across a reset changes nothing.
        try:
            if operative:
                self.store.remove(AVAILABILITY_FILE)
            else:
                self.store.write_atomic(AVAILABILITY_FILE, b"1")
        except StorageError as e:
            return _cmd.STORAGE, "availability not stored: %s" % e
        self.charger.set_available(operative)
        return None

    def cmd_get_config(self, keys):
        return self.cfg.public(keys)

    def cmd_set_config(self, changes):
        # Validate and store a copy first: a change that is refused or cannot be stored
        # changes nothing in the running station.
        trial = Config(self.cfg.changed_from_defaults())
        try:
            changed = trial.update(changes)
            meter_keys = [k for k in changed if k.startswith("meter_")]
            if meter_keys:
                load_map(trial["meter_map"], trial["meter_custom_map"])
        except ValueError as e:
            return _cmd.PROPERTY_CONSTRAINT, str(e)
        guard = self._hardware_guard(trial, changes, changed)
        if guard:
            return guard
        try:
            config_store.save(self.store, trial)
        except StorageError as e:
            return _cmd.STORAGE, "config not stored: %s" % e
        self.cfg.update(changes)
        self.charger.reload_config()
        if self._fallback and "comms_fallback_ma" in changed:
            # The charger holds the fallback it was given when the link was lost.
            self.charger.set_comms_fallback(self.cfg["comms_fallback_ma"])
        if self.meter is not None and meter_keys:
            self.meter.configure(self.cfg)
        later = [k for k in changed if needs_reboot(k)]
        for k in later:
            if k not in self.pending_reboot:
                self.pending_reboot.append(k)     # stored, applied after the next reboot
        if later:
            self._queue_event({"type": "config_pending_reboot", "keys": later})
        return None

    def _hardware_guard(self, trial, changes, changed):
        # What the hardware is (a socket or a cable, its phases) changes only with the
        # contactor open; no setting may exceed the hardware's rated current.
        if self.charger.contactor:
            for k in changed:
                if is_hardware(k):
                    return (_cmd.BUSY,
                            "%s: not while the contactor is closed (stop the charge first)" % k)
        ceiling = self.ceiling_ma
        if ceiling is not None:
            for k in ("max_current_ma", "comms_fallback_ma"):
                if k in changes and trial[k] > ceiling:
                    return (_cmd.PROPERTY_CONSTRAINT, "%s: %d above the hardware rating %d"
                            " (board file rated_current_ma)" % (k, trial[k], ceiling))
        return None

    def cmd_reboot(self, now_ms):
        if self._reboot_at is not None:
            return _cmd.BUSY, "reboot already scheduled"
        self.charger.pause()
        self.sessions.stop_reason(REASON_REBOOT)
        self._reboot_at = ticks_add(now_ms, _REBOOT_GRACE_MS)
        self._reboot_deadline = ticks_add(now_ms, _REBOOT_FORCE_MS)
        return None

    def _reboot_due(self, now):
        if ticks_diff(now, self._reboot_at) < 0:
            return
        # A fault raised meanwhile shows F for its full fault_hold_ms first (Table A.5),
        # deadline or not; a charging EV gets until the deadline to stop.
        if not self.charger.ready_for_reset(ticks_diff(now, self._reboot_deadline) >= 0):
            return
        self._reboot_now = True

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

    def cmd_selftest(self, now_ms):
        if not self.cfg["rcd_selftest"]:
            # The charger drops the request: no test would run and no result would come.
            return _cmd.DISABLED, "the residual-current self-test is disabled (rcd_selftest)"
        if self.charger.contactor:
            return _cmd.BUSY, "charging: the self-test runs when the contactor is open"
        self.charger.request_selftest()
        return None

    def cmd_diagnostics(self):
        return self.diagnostics()

    def cmd_clear_fault(self, name, now_ms):
        try:
            code = _faults.by_name(name).code
        except ValueError as e:
            return _cmd.PROPERTY_CONSTRAINT, str(e)
        err = self.clear_fault(code, True, now_ms)
        if err is None:
            return None
        if err.endswith("on site"):
            return _cmd.ON_SITE, err
        if err.endswith("not active"):
            return _cmd.ALREADY, err
        return _cmd.BUSY, err                  # its cause is still present: later

    def clear_fault(self, code, remote, now_ms):
        """A person asks to clear fault `code` (`remote`: from the backend; else on site,
        diag.clear). None when cleared, else why not. A latch cleared is on flash before
        this returns, so a reset right after it (the loop stopped at the REPL, say) does
        not bring it back."""
        err = self.charger.clear_fault(code, remote)
        if err is None and self.safe.due(self.faults, self.charger):
            self._save_safe(now_ms, True)
        return err
