"""Test doubles for the backend link: a station that records the commands it receives.

Runs on CPython and on the MicroPython unix port (the system tests drive MqttLink on the
unix port with it too).
"""
from firmware.config import Config


class RecordingTarget:
    """A CommandTarget that records every call as a tuple (name, args...) in `calls`.
    `refuse[name] = reason` makes that command fail with `reason`."""

    def __init__(self, cfg=None):
        self.calls = []
        self.refuse = {}
        self.cfg = cfg if cfg is not None else Config()

    def _done(self, name, *args):
        self.calls.append((name,) + args)
        return self.refuse.get(name)

    def cmd_start(self, now_ms, id_tag=None, connector_id=None):
        if id_tag is None and connector_id is None:
            return self._done("start")
        return self._done("start", id_tag, connector_id)

    def cmd_stop(self, now_ms, session_id=None, sent_at=None):
        if session_id is None and sent_at is None:
            return self._done("stop")
        return self._done("stop", session_id, sent_at)

    def cmd_authorize(self, id_tag, now_ms):
        return self._done("authorize", id_tag)

    def cmd_set_limit(self, limit_ma, expires_s, now_ms):
        return self._done("set_limit", limit_ma, expires_s)

    def cmd_set_availability(self, operative, now_ms):
        return self._done("set_availability", operative)

    def cmd_get_config(self, keys):
        self.calls.append(("get_config", keys))
        return self.cfg.public(keys)

    def cmd_set_config(self, changes):
        reason = self._done("set_config", changes)
        if reason is not None:
            return reason
        try:
            self.cfg.update(changes)
        except ValueError as e:
            return e.args[0]
        return None

    def cmd_reboot(self, now_ms):
        return self._done("reboot")

    def cmd_selftest(self, now_ms):
        return self._done("selftest")

    def cmd_diagnostics(self):
        self.calls.append(("diagnostics",))
        return {"uptime_s": 12, "heap_free": 40000}

    def cmd_clear_fault(self, name, now_ms):
        return self._done("clear_fault", name)
