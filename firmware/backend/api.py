"""The backend interface, in the station's terms.

A backend (MQTT, OCPP 1.6J) is a plug-in the station steps once per loop iteration; the
station knows nothing of its protocol. Two directions:

Station -> backend (what a backend implements, `Backend` below):
    step(now)          one bounded, non-blocking slice of work (connection, messages)
    on_event(ev)       every charger event as the ring holds it: (t_ms, kind, a, b)
    id_tag(tag, now)   a card read at the station that the backend must decide on
    online             True while the backend is reachable
    comms_lost(now)    True once it has been unreachable for comms_loss_timeout_s
    resolve()          the one blocking DNS lookup, before the control loop starts
    close(reason)      the station is going down
    stats()            a dict for diagnostics

Backend -> station: firmware.backend.station_ops.StationOps, whose operations return one of
the result codes below (stable numbers: a protocol maps them to its own words, as OCPP's
Accepted / Rejected / Scheduled), never free text.
"""
from firmware.compat import const

OK = const(0)            # done
SCHEDULED = const(1)     # accepted, takes effect later (after the session, after a reboot)
NO_EV = const(2)         # needs a connected EV
INOPERATIVE = const(3)   # the station is out of service
BUSY = const(4)          # in use (a session of another user, a reboot under way)
INVALID = const(5)       # the request is malformed or out of range
UNSUPPORTED = const(6)   # this station cannot do it (no such hardware, no such key)
STORAGE = const(7)       # it could not be stored, so nothing changed
REJECTED = const(8)      # refused (not authorized, not allowed now)

CODE_NAMES = ("ok", "scheduled", "no_ev", "inoperative", "busy", "invalid", "unsupported",
              "storage", "rejected")


class Backend:
    """The base of every backend: what the station calls."""

    online = False

    def step(self, now):
        raise NotImplementedError

    def on_event(self, ev):
        pass

    def id_tag(self, id_tag, now):
        """A card read at the station while the backend decides (auth_mode "backend",
        online). The backend answers later through StationOps.authorize_result."""
        raise NotImplementedError

    def comms_lost(self, now):
        return False

    def resolve(self):
        pass

    def close(self, reason):
        pass

    def stats(self):
        return {}
