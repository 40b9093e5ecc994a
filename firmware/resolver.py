"""A host name resolved off the control path: one lookup in flight, the answer cached.

getaddrinfo() blocks for as long as DNS takes: on the ESP32 (lwIP) seconds when the
resolver is unreachable. The ESP32 port releases the GIL around it (ports/esp32/modsocket.c,
_socket_getaddrinfo: MP_THREAD_GIL_EXIT before lwip_getaddrinfo), so the lookup runs in a
_thread while the control loop goes on; the loop only reads the cached answer.

    r = Resolver("broker.example", 8883, socket.SOCK_STREAM)
    ai = r.get(now_ms)       # the cached getaddrinfo() entry, or None while none is known
    r.refresh()              # after failed connects: look up again, keep using the old one

- An IPv4 literal needs no DNS (lwIP answers it without a query): it is looked up inline,
  so a station with an address configured never starts a thread.
- A name is looked up in a thread (`spawn`, default _thread.start_new_thread), one lookup
  at a time per Resolver; a new one starts when none is cached, when refresh() asked for
  one, or every `max_age_ms` (records move; the old address stays in use meanwhile).
- A failed lookup is retried after `retry_ms`; the error is kept in `last_error`.
- The thread writes `_answer` then `_done` (single writer; the loop reads `_done` first):
  under the GIL (ESP32, the unix port, CPython) no lock is needed.
Without _thread (a port built without it) the lookup runs inline, blocking (docs/architecture.md).
"""
from firmware.compat import const, ticks_add, ticks_diff

_RETRY_MS = const(5000)
_MAX_AGE_MS = const(3600000)       # re-resolve hourly (a TTL the resolver does not expose)


def is_ipv4(host):
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or int(p) > 255:
            return False
    return True


def _default_spawn():
    try:
        import _thread
    except ImportError:
        return None
    return _thread.start_new_thread


class Resolver:
    def __init__(self, host, port, socktype, getaddrinfo=None, spawn=-1,
                 retry_ms=_RETRY_MS, max_age_ms=_MAX_AGE_MS):
        if getaddrinfo is None:
            import socket
            getaddrinfo = socket.getaddrinfo
        self.host = host
        self.port = port
        self.socktype = socktype
        self._gai = getaddrinfo
        if spawn == -1:
            spawn = _default_spawn()
        self._spawn = spawn if callable(spawn) else None     # None: inline
        self.retry_ms = retry_ms
        self.max_age_ms = max_age_ms
        self.literal = is_ipv4(host)
        self.addr = None            # the getaddrinfo() entry in use
        self.lookups = 0
        self.failures = 0
        self.last_error = None
        self._busy = False
        self._done = False
        self._answer = None         # (entry, None) or (None, error text)
        self._due = None            # ticks_ms of the next lookup; None: now
        self._stale = True

    @property
    def busy(self):
        return self._busy

    def refresh(self):
        """Look up again at the next get() (the cached address stays in use meanwhile)."""
        self._stale = True
        self._due = None

    def get(self, now_ms):
        """The cached entry (family, type, proto, canonname, sockaddr), or None. Never
        waits for DNS unless the port has no threads."""
        if self._busy:
            if self._done:
                self._busy = False
                self._take(now_ms)
        elif self._stale and (self._due is None or ticks_diff(now_ms, self._due) >= 0):
            self._start(now_ms)
        return self.addr

    def _start(self, now_ms):
        self.lookups += 1
        self._stale = False
        self._due = ticks_add(now_ms, self.retry_ms)
        if self.literal or self._spawn is None:
            self._lookup()
            self._take(now_ms)
            return
        self._busy = True
        self._done = False
        try:
            self._spawn(self._lookup, ())
        except Exception as e:       # noqa: BLE001 - no thread now (memory): retried later
            self._busy = False
            self._answer = (None, "no thread: %r" % (e,))
            self._take(now_ms)

    def _lookup(self):
        # The thread's body: everything it shares is written here, `_done` last.
        try:
            ai = self._gai(self.host, self.port, 0, self.socktype)
            self._answer = (ai[0], None) if ai else (None, "no address")
        except Exception as e:       # noqa: BLE001 - reported through get()
            self._answer = (None, "%s %s" % (type(e).__name__, e))
        self._done = True

    def _take(self, now_ms):
        entry, err = self._answer
        self._answer = None
        if entry is None:
            self.failures += 1
            self.last_error = err
            self._stale = True
            self._due = ticks_add(now_ms, self.retry_ms)
            return
        self.addr = entry
        self.last_error = None
        self._stale = False
        # A literal never changes; a name is looked up again after max_age_ms.
        self._due = None if self.literal else ticks_add(now_ms, self.max_age_ms)
        if not self.literal:
            self._stale = True

    def stats(self):
        return {"host": self.host, "lookups": self.lookups, "failures": self.failures,
                "busy": self._busy, "resolved": self.addr is not None,
                "last_error": self.last_error}
