# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import json
import unittest

from firmware import commands
from firmware.commands import CommandDispatcher, CommandError, parse
from firmware.config import Config

from mqtt_doubles import RecordingTarget

NOW = 12345


def cmd(name, args=None, corr="c-1", **extra):
    msg = {"v": 1, "id": corr, "cmd": name}
    if args is not None:
        msg["args"] = args
    for k in extra:
        msg[k] = extra[k]
    return json.dumps(msg).encode()


# (payload, a fragment the error reason must contain)
MALFORMED = [
    (b"", "not valid JSON"),
    (b"garbage", "not valid JSON"),
    (b"{\"id\": \"x\", \"cmd\": \"start\"", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\"start\"", "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b"{\"cmd\": \"start\"}", "id: missing"),
    (b"{\"id\": true, \"cmd\": \"start\"}", "id: expected"),
    (b"{\"id\": \"\", \"cmd\": \"start\"}", "id: expected"),
    (b"{\"id\": [1], \"cmd\": \"start\"}", "id: expected"),
    (json.dumps({"id": "x" * 65, "cmd": "start"}).encode(), "id: expected"),
    (b"{\"id\": \"a\"}", "cmd: missing"),
    (b"{\"id\": \"a\", \"cmd\": 7}", "cmd: missing"),
    (cmd("explode"), "unknown command explode"),
    (cmd("START"), "unknown command"),
    (cmd("start", v=2), "unsupported version"),
    (cmd("start", v=True), "unsupported version"),
    (cmd("start", extra=1), "unknown field extra"),
    (cmd("start", [1]), "args: expected an object"),
    (cmd("start", "now"), "args: expected an object"),
    (cmd("start", {"force": True}), "unknown argument force"),
    (cmd("authorize"), "authorize.id_tag: missing"),
    (cmd("authorize", {"id_tag": ""}), "length must be 1..36"),
    (cmd("authorize", {"id_tag": "x" * 37}), "length must be 1..36"),
    (cmd("authorize", {"id_tag": 1234}), "expected a string"),
    (cmd("authorize", {"id_tag": "AB\nCD"}), "printable ASCII"),
    (cmd("authorize", {"id_tag": "AB CD"}), "printable ASCII"),
    (cmd("authorize", {"id_tag": "AB\u00c4"}), "printable ASCII"),
    (cmd("set_limit"), "set_limit.limit_ma: missing"),
    (cmd("set_limit", {"limit_ma": "16000"}), "expected an integer"),
    (cmd("set_limit", {"limit_ma": 16.5}), "expected an integer"),
    (cmd("set_limit", {"limit_ma": True}), "expected an integer"),
    (cmd("set_limit", {"limit_ma": -1}), "out of range"),
    (cmd("set_limit", {"limit_ma": 80001}), "out of range"),
    (cmd("set_limit", {"limit_ma": 5999}), "0 (pause) or 6000..80000"),
    (cmd("set_limit", {"limit_ma": 1}), "0 (pause) or 6000..80000"),
    (cmd("set_limit", {"limit_ma": 16000, "expires_s": 0}), "expires_s: 0 out of range"),
    (cmd("set_limit", {"limit_ma": 16000, "expires_s": 604801}), "out of range"),
    (cmd("set_limit", {"limit_ma": 16000, "expires": 60}), "unknown argument expires"),
    (cmd("set_availability"), "availability: missing"),
    (cmd("set_availability", {"availability": "broken"}), "must be one of operative, inoperative"),
    (cmd("set_availability", {"availability": True}), "must be one of"),
    (cmd("get_config", {"keys": "mqtt_host"}), "expected a list"),
    (cmd("get_config", {"keys": []}), "1..32 keys"),
    (cmd("get_config", {"keys": ["no_such_key"]}), "unknown config key no_such_key"),
    (cmd("get_config", {"keys": [5]}), "unknown config key 5"),
    (cmd("set_config"), "set_config.changes: missing"),
    (cmd("set_config", {"changes": {}}), "1..32 keys"),
    (cmd("set_config", {"changes": []}), "expected an object"),
    (cmd("set_config", {"changes": {"no_such_key": 1}}), "no_such_key: unknown key"),
    (cmd("set_config", {"changes": {"max_current_ma": 1}}), "out of range"),
    (cmd("set_config", {"changes": {"max_current_ma": "32000"}}), "expected an integer"),
    (cmd("set_config", {"changes": {"auth_mode": "maybe"}}), "must be one of"),
    (cmd("clear_fault"), "clear_fault.name: missing"),
    (cmd("clear_fault", {"name": ""}), "length must be"),
    (cmd("clear_fault", {"name": 3}), "expected a string"),
    (b"{\"id\": \"big\", \"cmd\": \"start\", \"args\": {\"pad\": \"" + b"x" * 1100 + b"\"}}",
     "payload too large"),
]


class MalformedCommandsAreRejected(unittest.TestCase):
    def test_every_malformed_command_gets_an_error_reply_and_changes_nothing(self):
        target = RecordingTarget()
        d = CommandDispatcher(target)
        before = target.cfg.public()
        for payload, fragment in MALFORMED:
            reply = d.handle(payload, NOW)
            self.assertEqual(reply["v"], 1)
            self.assertIs(reply["ok"], False)
            self.assertIn(fragment, reply["error"])
        self.assertEqual(target.calls, [])
        self.assertEqual(target.cfg.public(), before)
        self.assertEqual(d.rejected, len(MALFORMED))
        self.assertEqual(d.accepted, 0)
        self.assertEqual(d.failed, 0)

    def test_error_reply_keeps_the_correlation_id_when_it_was_readable(self):
        d = CommandDispatcher(RecordingTarget())
        reply = d.handle(cmd("set_limit", {"limit_ma": 99999}, corr="c-77"), NOW)
        self.assertEqual(reply["id"], "c-77")
        self.assertEqual(reply["cmd"], "set_limit")
        reply = d.handle(b"garbage", NOW)
        self.assertIsNone(reply["id"])

    def test_parse_raises_a_value_error_with_the_reason(self):
        with self.assertRaises(ValueError):
            parse(cmd("set_limit", {"limit_ma": 3}))
        try:
            parse(cmd("explode"))
        except CommandError as e:
            self.assertIn("unknown command", e.args[0])


class ValidCommandsReachTheStation(unittest.TestCase):
    def setUp(self):
        self.target = RecordingTarget()
        self.d = CommandDispatcher(self.target)

    def test_each_command_calls_its_method_with_validated_arguments(self):
        cases = [
            (cmd("start"), ("start",)),
            (cmd("stop", {}), ("stop",)),
            (cmd("authorize", {"id_tag": "04A2B3C4D5"}), ("authorize", "04A2B3C4D5")),
            # The longest idTag the reader path accepts (and asks the backend about).
            (cmd("authorize", {"id_tag": "E" * 36}), ("authorize", "E" * 36)),
            (cmd("set_limit", {"limit_ma": 16000}), ("set_limit", 16000, None)),
            (cmd("set_limit", {"limit_ma": 0, "expires_s": 600}), ("set_limit", 0, 600)),
            (cmd("set_limit", {"limit_ma": 6000, "expires_s": None}), ("set_limit", 6000, None)),
            (cmd("set_availability", {"availability": "inoperative"}), ("set_availability", False)),
            (cmd("set_availability", {"availability": "operative"}), ("set_availability", True)),
            (cmd("reboot"), ("reboot",)),
            (cmd("selftest"), ("selftest",)),
            (cmd("clear_fault", {"name": "RCD_TRIP"}), ("clear_fault", "RCD_TRIP")),
        ]
        for payload, call in cases:
            reply = self.d.handle(payload, NOW)
            self.assertIs(reply["ok"], True)
            self.assertEqual(reply["id"], "c-1")
            self.assertEqual(self.target.calls[-1], call)
        self.assertEqual(self.d.accepted, len(cases))
        self.assertEqual(self.d.rejected, 0)

    def test_version_may_be_omitted_and_integer_ids_are_kept(self):
        reply = self.d.handle(b'{"id": 42, "cmd": "start"}', NOW)
        self.assertIs(reply["ok"], True)
        self.assertEqual(reply["id"], 42)

    def test_a_refusal_by_the_station_is_an_error_reply_with_its_reason(self):
        self.target.refuse["start"] = "no EV connected"
        reply = self.d.handle(cmd("start"), NOW)
        self.assertIs(reply["ok"], False)
        self.assertEqual(reply["error"], "no EV connected")
        self.assertEqual(self.d.failed, 1)
        self.assertEqual(self.d.rejected, 0)

    def test_a_station_exception_becomes_an_error_reply(self):
        def broken(now_ms):
            raise KeyError("oops")
        self.target.cmd_stop = broken
        reply = self.d.handle(cmd("stop"), NOW)
        self.assertIs(reply["ok"], False)
        self.assertIn("internal error", reply["error"])

    def test_get_config_never_shows_a_secret(self):
        self.target.cfg.update({"mqtt_password": "hunter2", "wifi_password": "pw"})
        reply = self.d.handle(cmd("get_config"), NOW)
        self.assertIs(reply["ok"], True)
        self.assertEqual(reply["data"]["mqtt_password"], "***")
        self.assertFalse("hunter2" in json.dumps(reply))
        reply = self.d.handle(cmd("get_config", {"keys": ["mqtt_password", "max_current_ma"]}), NOW)
        self.assertEqual(reply["data"], {"mqtt_password": "***", "max_current_ma": 32000})

    def test_secrets_are_masked_even_when_the_station_forgets(self):
        self.target.cmd_get_config = lambda keys: {"mqtt_password": "leaked", "phases": 3}
        self.target.cmd_diagnostics = lambda: {"wifi_password": "leaked2", "heap": 1}
        data = self.d.handle(cmd("get_config"), NOW)["data"]
        self.assertEqual(data, {"mqtt_password": "***", "phases": 3})
        data = self.d.handle(cmd("diagnostics"), NOW)["data"]
        self.assertEqual(data, {"wifi_password": "***", "heap": 1})

    def test_set_config_applies_through_the_station_and_names_reboot_keys(self):
        reply = self.d.handle(cmd("set_config", {"changes": {"max_current_ma": 16000,
                                                              "mqtt_password": "new"}}), NOW)
        self.assertIs(reply["ok"], True)
        self.assertEqual(reply["data"]["keys"], ["max_current_ma", "mqtt_password"])
        self.assertEqual(reply["data"]["reboot_required"], ["mqtt_password"])
        self.assertFalse("new" in json.dumps(reply))
        self.assertEqual(self.target.cfg["max_current_ma"], 16000)

    def test_set_config_relation_errors_come_back_from_the_station(self):
        # Each key is valid alone; together they break restore < derate.
        reply = self.d.handle(cmd("set_config", {"changes": {"temp_restore_dc": 700}}), NOW)
        self.assertIs(reply["ok"], False)
        self.assertIn("temperatures", reply["error"])
        self.assertEqual(self.target.cfg["temp_restore_dc"], Config()["temp_restore_dc"])

    def test_set_config_refuses_topic_names_the_link_cannot_use(self):
        # station_id and mqtt_prefix become MQTT topic levels at the next boot: a wildcard,
        # a level separator in the id or a control character would stop the link from
        # being built at all, so they are refused now with a reason.
        from firmware.messages import Topics
        for key, value in (("station_id", "cp/1"), ("station_id", "cp+1"),
                           ("station_id", "cp#"), ("station_id", "cp\x001"),
                           ("mqtt_prefix", "site/+"), ("mqtt_prefix", "#"),
                           ("mqtt_prefix", "a\tb")):
            reply = self.d.handle(cmd("set_config", {"changes": {key: value}}), NOW)
            self.assertIs(reply["ok"], False, value)
            self.assertIn(key, reply["error"])
            self.assertEqual(self.target.cfg[key], Config()[key])
        for key, value in (("station_id", "b\u00fcro-7"), ("mqtt_prefix", "site/a")):
            reply = self.d.handle(cmd("set_config", {"changes": {key: value}}), NOW)
            self.assertIs(reply["ok"], True, value)
        Topics(self.target.cfg["mqtt_prefix"], self.target.cfg["station_id"])

    def test_diagnostics_returns_the_snapshot(self):
        reply = self.d.handle(cmd("diagnostics"), NOW)
        self.assertEqual(reply["data"], {"uptime_s": 12, "heap_free": 40000})

    def test_command_names_are_the_documented_set(self):
        self.assertEqual(commands.COMMAND_NAMES,
                         ("authorize", "clear_fault", "diagnostics", "get_config", "reboot",
                          "selftest", "set_availability", "set_config", "set_limit", "start",
                          "stop"))
