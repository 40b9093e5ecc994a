"""SendLocalList (OCPP 1.6 5.15): a full or differential update of the Local Authorization
List (firmware/ocpp16/localauth.py); NotSupported while LocalAuthListEnabled is false."""
from firmware.ocpp16 import clock
from firmware.ocpp16.localauth import STATUSES
from firmware.ocpp16.rpc import OCCURRENCE, PROPERTY, CallError, choice, field

MAX_LENGTH = 32          # SendLocalListMaxLength: 32 entries fit a 4 KB frame with expiries


def handle(b, p, now):
    version = field(p, "listVersion", int)
    full = choice(p, "updateType", ("Differential", "Full")) == "Full"
    items = field(p, "localAuthorizationList", list, False) or []
    if len(items) > MAX_LENGTH:
        raise CallError(OCCURRENCE, "more than %d entries" % MAX_LENGTH)
    entries = []
    for item in items:
        if not isinstance(item, dict):
            raise CallError(PROPERTY, "localAuthorizationList: objects")
        tag = field(item, "idTag", str, max_len=20)
        if not isinstance(tag, str) or not tag or [c for c in tag if not "!" <= c <= "~"]:
            raise CallError(PROPERTY, "idTag: printable ASCII without spaces")
        info = field(item, "idTagInfo", dict, False)
        st = None
        expiry = None
        if info is not None:
            st = STATUSES.index(choice(info, "status", STATUSES))
            when = field(info, "expiryDate", str, False)
            if when is not None:
                try:
                    expiry = clock.parse(when)
                except ValueError:
                    raise CallError(PROPERTY, "expiryDate: not an ISO 8601 date-time")
        elif full:
            continue             # a full list names what is in it: no idTagInfo, no entry
        entries.append((tag.upper().encode(), st, expiry))
    if not b.local.enabled:
        return {"status": "NotSupported"}
    if version < 0:
        return {"status": "Failed"}
    return {"status": b.local.apply(version, full, entries)}
