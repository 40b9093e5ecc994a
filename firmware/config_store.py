"""The station configuration on flash: the one load path and the one save path.

FILE holds the keys that differ from the defaults (Config.to_json). Every save writes the
same text to COPY first, then to FILE, each atomically (firmware/storage.py Store), so COPY
is always a configuration that passed validation.

Loading never falls back to the plain defaults when a stored configuration exists but
cannot be used: a default max_current_ma of 32 A on a 16 A site overloads its supply.
  - FILE valid: used; COPY is brought up to date when it differs (a save cut off between
    the two writes, or a copy lost).
  - FILE missing, no COPY: a station never configured; the defaults, no error.
  - otherwise (FILE damaged, not UTF-8, not JSON, not an object, a key unknown or out of
    range, or FILE missing beside a COPY): COPY when it is valid, else the defaults with
    config.SAFE_FALLBACK on top (6 A, one phase, ...). The reason is returned: the station
    raises STORAGE_ERROR and puts it in its boot event and diagnostics.
"""
import json

from firmware.config import SAFE_FALLBACK, Config, ConfigError
from firmware.storage import StorageError

FILE = "config.json"
COPY = "config.last"


def _parse(store, name):
    """(Config, None) from the stored file, (None, None) when it does not exist, or
    (None, reason) when it cannot be used."""
    try:
        raw = store.read(name)
    except StorageError as e:
        return None, e.args[0] if e.args else "unreadable"
    if raw is None:
        return None, None
    try:
        values = json.loads(bytes(raw).decode())
    except UnicodeError:
        return None, "%s: not UTF-8 text" % name
    except ValueError:
        return None, "%s: not valid JSON" % name
    if not isinstance(values, dict):
        # [] or null once loaded as "nothing changed": every default, 32 A included.
        return None, "%s: expected a JSON object" % name
    try:
        return Config(values), None
    except ConfigError as e:
        return None, "%s: %s" % (name, e.args[0] if e.args else e)


def safe_defaults():
    """The defaults with the safety-relevant keys at their most cautious values."""
    return Config(SAFE_FALLBACK)


def load(store):
    """(Config, error): error is None when the stored configuration (or, on a station
    never configured, the defaults) was used as it is."""
    cfg, why = _parse(store, FILE)
    if cfg is not None:
        _refresh_copy(store, cfg)
        return cfg, None
    if why is None:
        why = "%s: missing" % FILE
        try:
            if not store.exists(COPY):
                return Config(), None        # never configured
        except StorageError:
            pass
    copy, copy_why = _parse(store, COPY)
    if copy is not None:
        return copy, "%s; running on the last valid copy (%s)" % (why, COPY)
    limits = ", ".join("%s %s" % (k, json.dumps(SAFE_FALLBACK[k])) for k in sorted(SAFE_FALLBACK))
    return safe_defaults(), "%s; no valid copy (%s); defaults with the safety limits at their" \
        " minimum: %s" % (why, copy_why or "missing", limits)


def _refresh_copy(store, cfg):
    data = cfg.to_json().encode()
    try:
        if store.read(COPY) != data:
            store.write_atomic(COPY, data)
    except StorageError:
        # The loaded configuration stands; the copy is tried again at the next boot or save.
        pass


def save(store, cfg):
    """Store `cfg` (COPY, then FILE). Raises StorageError when either write fails (FILE is
    unchanged then: a failed COPY stops the save before it)."""
    data = cfg.to_json().encode()
    store.write_atomic(COPY, data)
    store.write_atomic(FILE, data)
