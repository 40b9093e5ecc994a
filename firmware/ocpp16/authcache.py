"""The Authorization Cache (OCPP 1.6 section 3.5.1; ClearCache 5.4) on flash.

The station remembers the idTagInfo the central system gave every idTag (Authorize.conf,
StartTransaction.conf, StopTransaction.conf with idTagInfo). The Local Authorization List
(localauth.py) asks it about a card the list does not hold, so an Accepted, unexpired entry
starts a session offline (LocalAuthorizeOffline) or at once online (LocalPreAuthorize).
AuthorizationCacheEnabled (`ocpp_auth_cache`) false: neither used nor filled.

One file, written atomically, in localauth.py's line format:
    b"cache 1\\n" then one line per entry b"<IDTAG> <S>[ <expiry>][ /<PARENT>]\\n"
oldest use first: an answer of the central system or a card it admits moves its line to the
end, and past MAX_ENTRIES the first lines (least recently used) are dropped. RAM holds the
count only; a lookup searches the file's bytes (cards are read seldom).

An entry whose expiryDate has passed becomes Expired (and is not used). One with an
expiryDate while the station knows no time is not used either: it may have lapsed.
"""
from firmware.compat import const
from firmware.ocpp16 import clock as _clock
from firmware.ocpp16.localauth import ACCEPTED, STATUSES, entry_line, find_entry, parse_entry
from firmware.storage import StorageError

FILE = "ocpp_cache.txt"
MAX_ENTRIES = const(64)      # about 40 bytes each: a 2.5 KB file, read whole by a lookup
_HEADER = b"cache 1\n"
_EXPIRED = const(2)          # STATUSES.index("Expired")


def _tag_bytes(s):
    """`s` upper-cased as bytes when it is an idTag (1..20 printable ASCII, no space)."""
    if not isinstance(s, str) or not 1 <= len(s) <= 20:
        return None
    for ch in s:
        if not "!" <= ch <= "~":
            return None
    return s.upper().encode()


class AuthCache:
    def __init__(self, store, cfg, clock=None, max_entries=MAX_ENTRIES):
        self.store = store
        self.cfg = cfg                # ocpp_auth_cache (AuthorizationCacheEnabled)
        self.clock = clock            # () -> seconds since 1970, 0 when unknown
        self.max_entries = max_entries
        self.count = 0
        self.error = None
        self.damaged = 0              # damaged cache files found (each then taken as empty)
        self.write_failures = 0
        try:
            data = store.read(FILE)
            if data is not None:
                if not data.startswith(_HEADER) or data[-1:] != b"\n":
                    raise ValueError("no cache header")
                n = 0
                if len(data) > len(_HEADER):
                    for line in data[len(_HEADER):-1].split(b"\n"):
                        parse_entry(line)
                        n += 1
                self.count = n
        except (StorageError, ValueError, IndexError) as e:
            self._damage(e)

    @property
    def enabled(self):
        return self.cfg["ocpp_auth_cache"]

    def __len__(self):
        return self.count

    def _damage(self, e):
        # A damaged cache is an empty one: its cards follow the offline policy until the
        # central system answers for them again. The next write starts a fresh file.
        self.damaged += 1
        self.count = 0
        self.error = "authorization cache: %s" % (e.args[0] if e.args else type(e).__name__)

    def _read(self):
        if self.error is not None:
            return None
        try:
            return self.store.read(FILE)
        except StorageError as e:
            self._damage(e)
            return None

    # -- lookups -------------------------------------------------------------------------------
    def status(self, id_tag, touch=False):
        """The status the cache gives `id_tag` ("Expired" once past its expiry), or None when
        disabled, not held, or its expiry cannot be checked (no clock). touch: an Accepted
        entry counts as used (moves to the most recent end)."""
        if not self.enabled or not self.count or _tag_bytes(id_tag) is None:
            return None
        data = self._read()
        if data is None:
            return None
        try:
            e = find_entry(data, id_tag)
        except ValueError as err:
            self._damage(err)
            return None
        if e is None:
            return None
        tag, st, expiry, parent = e
        if STATUSES[st] != ACCEPTED:
            return STATUSES[st]
        if expiry is not None:
            now = self.clock() if self.clock is not None else 0
            if not now:
                return None
            if expiry <= now:
                # OCPP 1.6 3.5.1: a lapsed entry is changed to Expired in the cache.
                self._put(tag, _EXPIRED, expiry, parent)
                return "Expired"
        if touch:
            self._put(tag, st, expiry, parent)
        return ACCEPTED

    def use(self, id_tag):
        """status() of a card presented at the station: a used Accepted entry is kept longest."""
        return self.status(id_tag, True)

    # -- filling -------------------------------------------------------------------------------
    def update(self, id_tag, info):
        """The central system's idTagInfo for `id_tag` (an answer of Authorize, Start- or
        StopTransaction). Anything not an idTagInfo is ignored."""
        tag = _tag_bytes(id_tag)
        if not self.enabled or tag is None or not isinstance(info, dict):
            return
        st = info.get("status")
        if st not in STATUSES:
            return
        expiry = None
        when = info.get("expiryDate")
        if when is not None:
            try:
                expiry = _clock.parse(when)
            except ValueError:
                return            # an entry whose validity is unknown is not cached
        parent = info.get("parentIdTag")
        self._put(tag, STATUSES.index(st), expiry, _tag_bytes(parent))

    def _put(self, tag, st, expiry, parent):
        """Write `tag`'s entry as the most recently used; drop the least recently used past
        the bound. A flash failure leaves the cache as it was (it is a cache)."""
        try:
            data = self._read() if self.count else None
            line = entry_line(tag, st, expiry, parent)
            if data and data.endswith(b"\n" + line + b"\n"):
                return        # already the newest, unchanged: no flash write (an Authorize
                              # and its StartTransaction answer alike)
            key = tag + b" "
            lines = [ln for ln in (data.split(b"\n")[1:-1] if data else ())
                     if not ln.startswith(key)]
            drop = len(lines) - (self.max_entries - 1)   # the least recently used go
            if drop > 0:
                lines = lines[drop:]
            n = len(lines)
            out = [_HEADER]
            for ln in lines:
                out.append(ln + b"\n")
            out.append(line + b"\n")
            self.store.write_atomic(FILE, b"".join(out))
        except (StorageError, MemoryError, OSError):
            self.write_failures += 1
            return
        self.count = n + 1
        self.error = None

    def clear(self):
        """ClearCache: True when the cache is empty afterwards."""
        try:
            self.store.remove(FILE)
        except (StorageError, OSError):
            return False
        self.count = 0
        self.error = None
        return True
