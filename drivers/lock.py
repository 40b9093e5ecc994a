"""Socket lock motor with a feedback switch (IEC 62196 sockets with a locking actuator).

Each command drives the motor for one pulse (300..600 ms per the actuator makers), then
checks the feedback; without the expected position it rests and retries up to `retries`
times, then reports `failed`. The pulse ends from a machine.Timer one-shot (a soft callback
on the ESP32), so the control loop never waits for the motor.
"""
from firmware.compat import const

_IDLE = const(0)
_PULSING = const(1)
_PAUSING = const(2)


class SocketLock:
    def __init__(self, lock_pin, unlock_pin, feedback, timer, Timer, motor_active_high=True,
                 feedback_locked_high=False, pulse_ms=400, retries=2, retry_pause_ms=500):
        self._lock_pin = lock_pin
        self._unlock_pin = unlock_pin
        self._feedback = feedback
        self._timer = timer
        self._one_shot = Timer.ONE_SHOT
        self._on = 1 if motor_active_high else 0
        self._off = 0 if motor_active_high else 1
        self._locked_level = 1 if feedback_locked_high else 0
        self._pulse_ms = pulse_ms
        self._retries = retries
        self._pause_ms = retry_pause_ms
        self._callback = self._on_timer     # bound once; re-armed from the callback
        self._phase = _IDLE
        self.target = None
        self.attempts = 0
        self.failed = False
        self._motor_off()

    def _motor_off(self):
        self._lock_pin.value(self._off)
        self._unlock_pin.value(self._off)

    def feedback_locked(self):
        return self._feedback.value() == self._locked_level

    def _at_target(self):
        return self.feedback_locked() == self.target

    def set(self, locked):
        """[tick] Start moving towards `locked`; returns at once. Repeating the same command
        (the safety tick does, every iteration) changes nothing: not while moving, not once
        there, and not after the retries failed (a new command starts a new attempt)."""
        locked = bool(locked)
        if locked == self.target and (self._phase != _IDLE or self.failed or self._at_target()):
            return
        self.target = locked
        self.failed = False
        self.attempts = 0
        self._start_pulse()

    def _start_pulse(self):
        self._motor_off()
        (self._lock_pin if self.target else self._unlock_pin).value(self._on)
        self._phase = _PULSING
        self.attempts += 1
        self._timer.init(mode=self._one_shot, period=self._pulse_ms, callback=self._callback)

    def _on_timer(self, _timer):
        if self._phase == _PULSING:
            self._motor_off()
            if self._at_target():
                self._phase = _IDLE
            elif self.attempts <= self._retries:
                self._phase = _PAUSING
                self._timer.init(mode=self._one_shot, period=self._pause_ms,
                                 callback=self._callback)
            else:
                self._phase = _IDLE
                self.failed = True
        elif self._phase == _PAUSING:
            self._start_pulse()

    @property
    def moving(self):
        return self._phase != _IDLE

    def confirmed(self):
        """Locked per the feedback, with the motor at rest."""
        return self._phase == _IDLE and self.feedback_locked()
