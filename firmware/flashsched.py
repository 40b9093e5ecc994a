"""How much flash work one loop iteration may do: one write, and none in the iteration
that reacts to the pilot.

On the ESP32 a flash write holds the CPU (an erase of a 4 KB NOR sector takes tens of ms,
and the cache is off meanwhile), and on any board a session end is a dozen writes: the
record, the live files removed, the counters, the outbox. Done in one iteration they made
it last 8-80 ms. Instead each writer keeps what it still has to write (a queue, a dirty
flag) and asks free() before each write; a writer that is told no writes in a later
iteration, in the same order, so a reset finds on flash what it found before: a prefix
of the same sequence of writes (firmware/session.py keeps its durability order that way).

    budget.begin(held)   every iteration, before the slow work; held: the safety tick has
                         just moved the contactor (its iteration does no flash work at all)
    budget.free()        True when the iteration has not written yet (then write one thing)
    budget.unbounded()   boot, shutdown, a stop at the REPL: write everything now

A write is one call of firmware/storage.py's Store or Journal (write_atomic, append,
remove, rewrite); Store.ops counts the flash operations they make. Until the first
begin() (the constructor, tests of the parts alone) the budget is unbounded: each write
happens where it is asked for, as it always did.
"""


class FlashBudget:
    def __init__(self, store):
        self.store = store
        self.bounded = False
        self.held = False
        self._mark = 0
        self.deferred = 0        # iterations that left writes for a later one (diagnostics)

    def begin(self, held=False):
        self.bounded = True
        self.held = held
        self._mark = self.store.ops

    def free(self):
        if not self.bounded:
            return True
        return not self.held and self.store.ops == self._mark

    def unbounded(self):
        self.bounded = False
        self.held = False


class _Always:
    """The budget of a part used on its own: every write at once."""
    bounded = False

    def free(self):
        return True


ALWAYS = _Always()
