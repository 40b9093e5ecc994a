"""What the station provides to the command dispatcher (firmware/commands.py): the interface,
as documentation. Nothing imports this module at run time: the Station implements these
methods (firmware/station_cmds.py), and a class whose methods all raise would only take
heap on the ESP32 (a function object and a table entry per method, even frozen)."""


class CommandTarget:
    """What the station provides to the command dispatcher. Every method returns None on
    success or a short reason string when the command makes no sense now (for example
    "no EV connected"), unless documented otherwise. now_ms is ticks_ms()."""

    def cmd_start(self, now_ms, id_tag=None, connector_id=None):
        """Start (or resume) charging, as OCPP's RemoteStartTransaction: `id_tag` (or None:
        the backend's own authorization) pays; `connector_id` None means the station's."""
        raise NotImplementedError

    def cmd_stop(self, now_ms, session_id=None, sent_at=None):
        """Stop charging (a pause: the session stays open until the EV leaves). Refused
        (OTHER_SESSION) when `session_id` names another session than the running one, or
        the command was sent (`sent_at`, UTC s) more than commands.STOP_SKEW_S before it began."""
        raise NotImplementedError

    def cmd_authorize(self, id_tag, now_ms):
        """Authorize `id_tag` (str, 1..36 printable ASCII characters) as if presented locally."""
        raise NotImplementedError

    def cmd_set_limit(self, limit_ma, expires_s, now_ms):
        """Backend current limit: 0..80000 mA, where anything below 6000 pauses the charge
        (the charger's rule: no duty offers less than 6 A); expires_s None = until
        changed, else 1..604800 s after which the limit lapses."""
        raise NotImplementedError

    def cmd_set_availability(self, operative, now_ms):
        """True = operative, False = inoperative (after any running session ends)."""
        raise NotImplementedError

    def cmd_get_config(self, keys):
        """Returns a dict of config values, secrets masked (Config.public(keys)); keys None
        means all."""
        raise NotImplementedError

    def cmd_set_config(self, changes):
        """Apply `changes` with Config.update (all or nothing) and persist; the
        ConfigError message is the reason."""
        raise NotImplementedError

    def cmd_reboot(self, now_ms):
        """Schedule a clean restart (after the reply has gone out)."""
        raise NotImplementedError

    def cmd_selftest(self, now_ms):
        """Schedule the self-test; its result is reported as an event."""
        raise NotImplementedError

    def cmd_diagnostics(self):
        """Returns a dict snapshot for troubleshooting (no secrets)."""
        raise NotImplementedError

    def cmd_clear_fault(self, name, now_ms):
        """Clear latched fault `name` if the fault table allows clearing it remotely."""
        raise NotImplementedError
