"""A fixed-size ring of small event records from the charge controller.

Each record is four integers (time in ms, kind, a, b), so the safety tick can report what
it did without allocating: `push()` writes into arrays allocated once. When the ring is full
the oldest record is overwritten and counted in `dropped`. The session, MQTT and logging
layers drain it with `pop()` outside the tick.

Kinds and their arguments:
  EV_STATE          a = new charge state (firmware.states), b = previous state
  EV_FAULT_RAISED   a = fault code (firmware.faults)
  EV_FAULT_CLEARED  a = fault code, b = 1 when cleared by a request (local/remote), else 0
  EV_CONTACTOR      a = 1 closed / 0 opened, b = reason (firmware.charger CONTACTOR_*)
  EV_OFFER          a = offered mA (0 = paused), b = binding limit (firmware.charger LIMIT_*)
  EV_SELFTEST       a = 1 passed / 0 failed, b = ms the residual-current monitor took
  EV_WAKEUP         a = 1 wake-up sequence started / 0 ended
  EV_LOCK           a = 1 lock commanded / 0 released
"""
from array import array

from firmware.compat import const

EV_STATE = const(0)
EV_FAULT_RAISED = const(1)
EV_FAULT_CLEARED = const(2)
EV_CONTACTOR = const(3)
EV_OFFER = const(4)
EV_SELFTEST = const(5)
EV_WAKEUP = const(6)
EV_LOCK = const(7)

_COUNT_MASK = const(0x3FFFFFFF)

KIND_NAMES = ("state", "fault_raised", "fault_cleared", "contactor", "offer", "selftest",
              "wakeup", "lock")


class EventRing:
    """Preallocated ring of (t_ms, kind, a, b). `push()` never allocates; `pop()` and
    `recent()` build tuples and lists, so call them outside the safety tick."""

    def __init__(self, capacity=64):
        if capacity < 1:
            raise ValueError("capacity: at least 1")
        self.capacity = capacity
        self._t = array("i", [0] * capacity)
        self._kind = array("i", [0] * capacity)
        self._a = array("i", [0] * capacity)
        self._b = array("i", [0] * capacity)
        self._head = 0      # next slot to write
        self._count = 0
        self.dropped = 0    # records overwritten before anyone popped them
        self.pushed = 0     # records ever pushed (modulo 2**30)

    def __len__(self):
        return self._count

    def push(self, t_ms, kind, a=0, b=0):
        i = self._head
        self._t[i] = t_ms
        self._kind[i] = kind
        self._a[i] = a
        self._b[i] = b
        i += 1
        if i == self.capacity:
            i = 0
        self._head = i
        # Counters wrap below 2**30 so they stay small ints on the ESP32 (no allocation).
        if self._count == self.capacity:
            self.dropped = (self.dropped + 1) & _COUNT_MASK
        else:
            self._count += 1
        self.pushed = (self.pushed + 1) & _COUNT_MASK

    def _slot(self, age):
        # age 0 = oldest held record
        i = self._head - self._count + age
        if i < 0:
            i += self.capacity
        return i

    def pop(self):
        """The oldest record as a tuple (t_ms, kind, a, b), or None when empty."""
        if not self._count:
            return None
        i = self._slot(0)
        self._count -= 1
        return (self._t[i], self._kind[i], self._a[i], self._b[i])

    def recent(self, n=None):
        """Up to `n` newest records (all held when None), oldest first; nothing is removed."""
        count = self._count if n is None or n > self._count else n
        out = []
        for age in range(self._count - count, self._count):
            i = self._slot(age)
            out.append((self._t[i], self._kind[i], self._a[i], self._b[i]))
        return out

    def history(self, n=None):
        """Up to `n` newest records ever pushed (popped ones included, until overwritten),
        oldest first; for diagnostics after the station has drained the ring."""
        held = self.capacity if self.pushed >= self.capacity or self.dropped else self.pushed
        if n is None or n > held:
            n = held
        out = []
        for k in range(n - 1, -1, -1):
            i = (self._head - 1 - k) % self.capacity
            out.append((self._t[i], self._kind[i], self._a[i], self._b[i]))
        return out

    def clear(self):
        self._count = 0
