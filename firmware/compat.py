"""The few MicroPython built-ins the core needs, with stand-ins where they differ.

Ticks wrap at 2**30 everywhere, as on the ESP32: on the device the built-ins already do;
on CPython (which has none) and on the unix port (whose period is far longer) this module
supplies functions that wrap at 2**30, so wraparound bugs show up in host tests instead of
after 12.4 days in the field.
"""
import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"

TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2

try:
    from gc import mem_free  # noqa: F401
except ImportError:
    def mem_free():
        # CPython has no fixed heap to run out of.
        return 1 << 30



def presize(obj, names):
    """Gives `obj` every attribute in `names` (None for now), so that its attribute table
    reaches its final size first. An instance's table grows by rehashing as attributes are
    added (a new block each time, the old one freed); for a wide object made late in the
    Station's construction (the MQTT link: 71 attributes, 584 B) the last growth needed a
    block the fragmented heap lacked (docs/performance.md, Heap). `names`: a constant
    tuple, in flash when frozen."""
    for name in names:
        setattr(obj, name, None)


def unload(name):
    """Forget the module `name` ("firmware.x"): out of sys.modules and its package, its
    globals, functions and tables leave the heap at the next collection, provided nothing
    else refers to them. For code that runs now and then (firmware/command_parse.py): a
    frozen module costs no flash reads to import again, but its globals dict, a function
    object per def and a dict per class are heap while it is imported."""
    sys.modules.pop(name, None)
    dot = name.rfind(".")
    if dot > 0:
        package = sys.modules.get(name[:dot])
        leaf = name[dot + 1:]
        if package is not None and leaf in package.__dict__:
            delattr(package, leaf)


# Names for module_room(): a constant tuple, so they are qstrs in flash, never strings
# interned at run time.
_ROOM = ("_r0", "_r1", "_r2", "_r3", "_r4", "_r5", "_r6", "_r7", "_r8", "_r9", "_r10", "_r11",
         "_r12", "_r13", "_r14", "_r15", "_r16", "_r17", "_r18", "_r19", "_r20", "_r21",
         "_r22", "_r23", "_r24", "_r25", "_r26", "_r27", "_r28", "_r29", "_r30", "_r31",
         "_r32", "_r33", "_r34", "_r35", "_r36", "_r37", "_r38", "_r39", "_r40", "_r41",
         "_r42", "_r43", "_r44", "_r45", "_r46", "_r47", "_r48", "_r49", "_r50", "_r51",
         "_r52", "_r53", "_r54", "_r55", "_r56", "_r57", "_r58", "_r59", "_r60", "_r61",
         "_r62", "_r63")


def module_room(package, modules, names):
    """Grows sys.modules to hold `modules` entries and `package`'s table `names`, now, when
    the heap is young. A dict grows only when it is full, then by a quarter, in one new
    block: the first import after the station was built (the command parser, `import
    diag` at the REPL) made the `firmware` package's full 37-slot table a 47-slot one
    (376 B), or sys.modules' 59 slots 73 (584 B), at a moment a fragmented heap had no such
    block. Entries added and removed again leave their slots free for the modules to come.
    At most len(_ROOM) entries are added to either."""
    pkg = sys.modules.get(package)
    more = max(0, modules - len(sys.modules))
    own = max(0, names - len(pkg.__dict__)) if pkg is not None else 0
    n = min(max(more, own), len(_ROOM))
    for i in range(n):
        if i < more:
            sys.modules[_ROOM[i]] = pkg
        if i < own:
            setattr(pkg, _ROOM[i], None)
    for i in range(n):
        if i < more:
            del sys.modules[_ROOM[i]]
        if i < own:
            delattr(pkg, _ROOM[i])


try:
    from micropython import const  # noqa: F401
except ImportError:
    def const(value):
        return value



def small_int(value):
    """`value` as a small int where it fits one. In a frozen module (the production image),
    an int literal over 8191 inside a constant tuple or other constant object is a long-int
    object in flash (tools/mpy-tool.py, mp_small_int_fits: the portable 14-bit range), and
    every operation on it allocates. An arithmetic result that fits is a small int again."""
    return value | 0


try:
    import time as _time
    _native = _time.ticks_add(TICKS_MAX, 1) == 0
except AttributeError:
    _native = False

if _native:
    from time import ticks_ms, ticks_add, ticks_diff, sleep_ms  # noqa: F401
else:
    if IS_MICROPYTHON:
        def ticks_ms():
            return _time.ticks_ms() & TICKS_MAX

        sleep_ms = _time.sleep_ms
    else:
        def ticks_ms():
            return int(_time.monotonic() * 1000) & TICKS_MAX

        def sleep_ms(ms):
            _time.sleep(ms / 1000)

    def ticks_add(ticks, delta):
        # As extmod/modtime.c: a delta of half the period or more has no defined result.
        if delta <= -_TICKS_HALF or delta >= _TICKS_HALF:
            raise OverflowError("ticks interval overflow")
        return (ticks + delta) & TICKS_MAX

    def ticks_diff(end, start):
        # Signed difference in [-2**29, 2**29), as on the device.
        return ((end - start + _TICKS_HALF) & TICKS_MAX) - _TICKS_HALF
