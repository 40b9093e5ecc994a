"""The Local Authorization List (OCPP 1.6 sections 3.5, 5.9, 5.15) on flash.

The central system installs it with SendLocalList (Full or Differential) and reads its
version with GetLocalListVersion. The station consults it for a card read at the reader:
offline when LocalAuthorizeOffline holds (offline_policy "local_list"), online before
Authorize when LocalPreAuthorize holds. The list takes the place of the station's own
allow-list (firmware/auth.py) while the OCPP backend runs, through the same interface
(`in`, `len`, `version`, `error`, `tags()`), so the station's authorization rules do not
learn about OCPP. `in` also asks the Authorization Cache (authcache.py) about a card the list
does not hold, which makes the cache serve LocalAuthorizeOffline and LocalPreAuthorize alike.

Compact on flash, next to nothing in RAM: one file, written atomically,
    b"<listVersion>\\n" then one line per entry b"<IDTAG> <S>[ <expiry>]\\n"
with the idTag upper-cased (CiString20: case-insensitive), S the first letter of its
idTagInfo status (Accepted, Blocked, Expired, Invalid, ConcurrentTx) and expiry in seconds
since 1970 (UTC). RAM holds the version and the count; a lookup searches the file's bytes
for the one line (cards are read seldom). The parentIdTag is not kept: this station has
one connector, so it never has to match a group.
"""
from firmware.storage import StorageError

FILE = "ocpp_list.txt"
STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
_LETTERS = b"ABEIC"

ACCEPTED = "Accepted"
FAILED = "Failed"
MISMATCH = "VersionMismatch"


def entry_line(tag, st, expiry=None, parent=None):
    """One entry's line, without its newline: `tag` upper-cased bytes, `st` an index into
    STATUSES, `expiry` seconds since 1970 or None, `parent` (the cache's parentIdTag) bytes
    or None, kept as b" /<parent>" so that it cannot be taken for an expiry."""
    line = tag + b" " + _LETTERS[st:st + 1]
    if expiry is not None:
        line += (" %d" % expiry).encode()
    if parent:
        line += b" /" + parent
    return line


def parse_entry(line):
    """(tag, status index, expiry or None, parent or None) of one line; ValueError when the
    line is not one entry_line() writes (a damaged file)."""
    f = line.split(b" ")
    st = _LETTERS.find(f[1]) if len(f) > 1 and len(f[1]) == 1 else -1
    if st < 0 or not f[0] or len(f) > 4:
        raise ValueError("damaged entry")
    expiry = None
    parent = None
    for x in f[2:]:
        if x[:1] == b"/":
            parent = x[1:]
        else:
            expiry = int(x)
    return f[0], st, expiry, parent


def find_entry(data, id_tag):
    """parse_entry() of `id_tag`'s line in a file's bytes (entries after a first line), or
    None. A search of the bytes: nothing per entry is built."""
    key = b"\n" + id_tag.upper().encode() + b" "
    i = data.find(key)
    if i < 0:
        return None
    end = data.find(b"\n", i + 1)
    return parse_entry(data[i + 1:end])


class LocalList:
    def __init__(self, store, cfg, clock=None, cache=None):
        self.store = store
        self.cfg = cfg                # ocpp_local_list (LocalAuthListEnabled), auth_list_max
        self.clock = clock            # () -> seconds since 1970, 0 when unknown
        self.cache = cache            # the Authorization Cache (authcache.py), consulted after
        self.version = 0
        self.count = 0
        self.error = None
        try:
            data = store.read(FILE)
            if data is not None:
                self.version = int(data[:data.find(b"\n")])
                self.count = data.count(b"\n") - 1
        except (StorageError, ValueError) as e:
            # An unreadable list is an empty one: unknown cards then follow the offline policy.
            self.version = 0
            self.count = 0
            self.error = "local list: %s" % (e.args[0] if e.args else type(e).__name__)

    @property
    def enabled(self):
        return self.cfg["ocpp_local_list"]

    # -- the allow-list interface (firmware/auth.py) -------------------------------------------
    def __len__(self):
        return self.count if self.enabled else 0

    def __contains__(self, id_tag):
        st = self.status(id_tag)
        if st is None and self.cache is not None:
            # OCPP 1.6 3.5.3: the list takes precedence; the Authorization Cache speaks only
            # for a card the list does not hold.
            st = self.cache.use(id_tag)
        return st == ACCEPTED

    def tags(self):
        out = []
        for line in self._lines():
            out.append(line.split(b" ")[0].decode())
        return out

    # -- lookups -------------------------------------------------------------------------------
    def status(self, id_tag):
        """The idTagInfo status the list gives `id_tag` ("Expired" once past its expiry), or
        None when the list is disabled or does not hold it."""
        if not self.enabled or not self.count or not isinstance(id_tag, str):
            return None
        try:
            data = self.store.read(FILE)
        except StorageError:
            return None
        if data is None:
            return None
        try:
            e = find_entry(data, id_tag)
        except ValueError:
            return None
        if e is None:
            return None
        st = STATUSES[e[1]]
        if st == ACCEPTED and e[2] is not None and self.clock is not None:
            now = self.clock()
            if now and e[2] <= now:
                return "Expired"
        return st

    def reported_version(self):
        """GetLocalListVersion: -1 when disabled, 0 when empty."""
        if not self.enabled:
            return -1
        return self.version if self.count else 0

    # -- updates (SendLocalList) ---------------------------------------------------------------
    def _lines(self):
        data = self.store.read(FILE)
        if not data:
            return []
        return data.split(b"\n")[1:-1]

    def apply(self, version, full, entries):
        """SendLocalList with `entries` already checked: [(IDTAG upper-cased bytes, status
        index or None to remove, expiry seconds or None)]. Returns the status to answer."""
        if not full and version <= self.version:
            return MISMATCH
        try:
            table = {}
            if not full:
                for line in self._lines():
                    table[line[:line.find(b" ")]] = line
            for tag, st, expiry in entries:
                if st is None:
                    table.pop(tag, None)
                else:
                    table[tag] = entry_line(tag, st, expiry)
            if len(table) > self.cfg["auth_list_max"]:
                return FAILED
            out = [("%d" % version).encode()]
            for tag in sorted(table):      # the same list, the same bytes
                out.append(table[tag])
            out.append(b"")
            self.store.write_atomic(FILE, b"\n".join(out))
        except (StorageError, MemoryError):
            return FAILED
        self.version = version
        self.count = len(table)
        self.error = None
        return ACCEPTED
