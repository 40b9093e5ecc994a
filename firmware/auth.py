"""Who may charge: the authorization modes, the offline policy and the local allow-list.

Modes (config `auth_mode`):
  free     every plug-in charges (autostart() is True); a presented idTag is recorded.
  backend  the backend decides: its authorize command or remote start authorizes; an idTag
           read at the station is forwarded to it ("ask_backend"). While the backend is
           unreachable, config `offline_policy` decides: local_list (the allow-list),
           allow_all, or deny.
  local    the allow-list stored on the station decides; works without any network.
           A remote start from the backend is still honoured (an operator's command).

request(id_tag, online, source) returns (accepted, reason). `accepted` is False with reason
"ask_backend" when the station must forward the tag to the backend and wait for its answer.

| mode    | source  | backend  | result                                                  |
|---------|---------|----------|---------------------------------------------------------|
| free    | any     | any      | True  "free"                                            |
| local   | reader  | any      | True "local_list" / False "not_in_list"                 |
| local   | backend | -        | True  "backend"                                         |
| backend | backend | -        | True  "backend"                                         |
| backend | reader  | online   | False "ask_backend"                                     |
| backend | reader  | offline  | local_list: True "offline_local_list" /                 |
|         |         |          |             False "offline_not_in_list"                 |
|         |         |          | allow_all:  True "offline_allow_all"                    |
|         |         |          | deny:       False "offline_deny"                        |

idTags are case-insensitive (OCPP CiString): compared upper-cased, reported as presented.
"""
import json

from firmware.storage import StorageError

SOURCE_READER = "reader"      # RFID/NFC reader (or a local button with a fixed tag)
SOURCE_BACKEND = "backend"    # authorize command or remote start from the backend

ACCEPTED_FREE = "free"
ACCEPTED_BACKEND = "backend"
ACCEPTED_LOCAL_LIST = "local_list"
ACCEPTED_OFFLINE_LIST = "offline_local_list"
ACCEPTED_OFFLINE_ALL = "offline_allow_all"
ASK_BACKEND = "ask_backend"
REJECTED_NOT_IN_LIST = "not_in_list"
REJECTED_OFFLINE_NOT_IN_LIST = "offline_not_in_list"
REJECTED_OFFLINE_DENY = "offline_deny"

ID_TAG_MAX = 36               # OCPP 2.0.1 IdToken (1.6 idTag is 20: a subset)
LIST_FILE = "auth_list.json"


class IdTagError(ValueError):
    pass


class AllowListError(ValueError):
    pass


def check_id_tag(id_tag):
    """The tag as given when it is 1..36 printable ASCII characters without spaces."""
    if not isinstance(id_tag, str):
        raise IdTagError("id_tag: expected a string")
    if not 1 <= len(id_tag) <= ID_TAG_MAX:
        raise IdTagError("id_tag: length must be 1..%d" % ID_TAG_MAX)
    for ch in id_tag:
        if not "!" <= ch <= "~":
            raise IdTagError("id_tag: only printable ASCII without spaces")
    return id_tag


class IdTagReader:
    """Interface of an idTag reader (RFID/NFC). poll() must not block: it returns the tag of a
    newly presented card once, else None. Drivers implement it; the core only polls."""

    def poll(self):
        return None


class AllowList:
    """idTags allowed locally, with the version the backend gave the list. Persisted with an
    atomic write on every change; a change that fails validation or storage changes nothing."""

    def __init__(self, store, max_entries=250):
        self.store = store
        self.max_entries = max_entries
        self.version = 0
        self._tags = set()
        self.error = None
        try:
            raw = store.read(LIST_FILE)
            if raw is not None:
                d = json.loads(raw)
                version = d["version"]
                if version is True or version is False or not isinstance(version, int):
                    raise ValueError("version is not an integer")
                self._tags = set(check_id_tag(t).upper() for t in d["tags"])
                self.version = version
        except (StorageError, ValueError, KeyError, TypeError, AttributeError) as e:
            # An unreadable list is an empty one: the offline policy then denies, safely.
            self._tags = set()
            self.version = 0
            self.error = "allow-list: %s" % (e.args[0] if e.args else type(e).__name__)

    def __len__(self):
        return len(self._tags)

    def __contains__(self, id_tag):
        return isinstance(id_tag, str) and id_tag.upper() in self._tags

    def tags(self):
        return sorted(self._tags)

    def _check_version(self, version):
        if version is True or version is False or not isinstance(version, int) or version < 1:
            raise AllowListError("allow-list: version must be a positive integer")
        if version <= self.version:
            raise AllowListError("allow-list: version %d is not newer than %d" % (version, self.version))

    def _normalised(self, tags, what):
        if isinstance(tags, str) or not isinstance(tags, (list, tuple, set)):
            raise AllowListError("allow-list: %s must be a list of idTags" % what)
        out = set()
        for t in tags:
            try:
                out.add(check_id_tag(t).upper())
            except IdTagError as e:
                raise AllowListError("allow-list: %s: %s" % (what, e.args[0]))
        return out

    def _commit(self, version, tags):
        if len(tags) > self.max_entries:
            raise AllowListError("allow-list: %d entries exceed auth_list_max %d" % (len(tags), self.max_entries))
        self.store.write_atomic(LIST_FILE, json.dumps({"version": version, "tags": sorted(tags)}).encode())
        self._tags = tags
        self.version = version
        self.error = None

    def replace(self, version, tags):
        """Full update: the list becomes `tags`."""
        self._check_version(version)
        self._commit(version, self._normalised(tags, "tags"))

    def update(self, version, add=(), remove=()):
        """Differential update: add and remove idTags."""
        self._check_version(version)
        add = self._normalised(add, "add")
        remove = self._normalised(remove, "remove")
        if add & remove:
            raise AllowListError("allow-list: an idTag both added and removed")
        self._commit(version, (self._tags - remove) | add)


class Authorizer:
    def __init__(self, cfg, store):
        self.cfg = cfg
        self.allow_list = AllowList(store, cfg["auth_list_max"])

    @property
    def mode(self):
        return self.cfg["auth_mode"]

    def autostart(self):
        """True when a plug-in alone starts charging (free mode)."""
        return self.cfg["auth_mode"] == "free"

    def request(self, id_tag, online, source=SOURCE_READER):
        """(accepted, reason) for `id_tag` presented from `source`; see the module table.
        `online`: the backend is reachable now. Raises IdTagError for a malformed tag."""
        check_id_tag(id_tag)
        if source != SOURCE_READER and source != SOURCE_BACKEND:
            raise ValueError("auth: unknown source %r" % (source,))
        mode = self.cfg["auth_mode"]
        if mode == "free":
            return True, ACCEPTED_FREE
        if source == SOURCE_BACKEND:
            return True, ACCEPTED_BACKEND
        if mode == "local":
            if id_tag in self.allow_list:
                return True, ACCEPTED_LOCAL_LIST
            return False, REJECTED_NOT_IN_LIST
        if online:
            return False, ASK_BACKEND
        policy = self.cfg["offline_policy"]
        if policy == "allow_all":
            return True, ACCEPTED_OFFLINE_ALL
        if policy == "deny":
            return False, REJECTED_OFFLINE_DENY
        if id_tag in self.allow_list:
            return True, ACCEPTED_OFFLINE_LIST
        return False, REJECTED_OFFLINE_NOT_IN_LIST
