# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import json
import unittest

from firmware import commands, messages, owner, strictjson
from firmware.commands import CommandDispatcher, CommandError, parse
from firmware.config import Config

from mqtt_doubles import RecordingTarget

NOW = 12345
WALL = 1767600000                      # UTC seconds (2026-01-05 08:00)
KEY = bytes(range(32))
KEY_HEX = "".join("%02x" % b for b in KEY)


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
    # Not JSON, though MicroPython's json.loads takes each of them (firmware/strictjson.py).
    (b'{"id": "c-1" "cmd": "reboot"}', "not valid JSON: byte 13: expected ','"),
    (b'{"id": "c-1", "cmd": "reboot",}', "not valid JSON: byte 30: expected a string key"),
    (b'{"id": "c-1", "cmd": "reboot"} x', "not valid JSON: byte 31: data after"),
    (b'{"id": "c-1", "cmd": "reboot"}\x00', "not valid JSON: byte 30: data after"),
    (b'{"id": "c-1", "cmd": "set_limit", "args": {"limit_ma": 016000}}', "not valid JSON"),
    (b'{"id": "c-1", "cmd": "set_limit", "args": {"limit_ma": 16000,}}', "not valid JSON"),
    (b'{"id": "c-1", "cmd": "set_config", "args": {"changes": {1: 2}}}', "not valid JSON"),
    (b'{"id": "c-1", "cmd": "stop", "args": [,]}', "not valid JSON"),
    # Invalid UTF-8 (RFC 3629): overlong, surrogate, CESU-8 pair, truncated, past U+10FFFF.
    (b'{"id": "\xc0\xaf", "cmd": "reboot"}', "not valid JSON: byte 8: invalid UTF-8"),
    (b'{"id": "\xed\xa0\x80", "cmd": "reboot"}', "invalid UTF-8"),
    (b'{"id": "\xed\xa0\xbd\xed\xb8\x80", "cmd": "reboot"}', "invalid UTF-8"),
    (b'{"id": "ab\xe2\x82", "cmd": "reboot"}', "invalid UTF-8"),
    (b'{"id": "\xf4\x90\x80\x80", "cmd": "reboot"}', "invalid UTF-8"),
    (b'{"id": "c-1", "cmd": "re\x80boot"}', "invalid UTF-8"),
    (b'{"id": "c-1", "cmd": "start", "\xe9": 1}', "invalid UTF-8"),
    (b'{"id": "\\ud800", "cmd": "reboot"}', "not valid JSON: byte 8: lone surrogate"),
    (b'{"id": "c-1", "cmd": "\\udc00"}', "lone surrogate"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\"start\"", "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b"{\"cmd\": \"start\"}", "id: missing"),
    (b"{\"id\": true, \"cmd\": \"start\"}", "id: expected"),
    (b"{\"id\": \"\", \"cmd\": \"start\"}", "id: expected"),
    (b"{\"id\": [1], \"cmd\": \"start\"}", "id: expected"),
    (json.dumps({"id": "x" * 65, "cmd": "start"}).encode(), "id: expected"),
    # 65 characters of 4 bytes each, raw and as escaped surrogate pairs.
    (b'{"id": "' + b"\xf0\x9f\x98\x80" * 65 + b'", "cmd": "start"}', "id: expected"),
    (b'{"id": "' + b"\\ud83d\\ude00" * 65 + b'", "cmd": "start"}', "id: expected"),
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
            parse(cmd("set_limit", {"limit_ma": 80001}))
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

    def test_stop_passes_the_named_session_and_the_sending_time(self):
        d = CommandDispatcher(self.target, lambda: WALL)
        d.handle(cmd("stop", {"session_id": "cp-1-7"}), NOW)
        d.handle(cmd("stop", sent_at=WALL - 50, ttl_s=60), NOW)
        self.assertEqual(self.target.calls[-2:], [("stop", "cp-1-7", None),
                                                  ("stop", None, WALL - 50)])
        reply = d.handle(cmd("stop", {"session_id": ""}), NOW)
        self.assertEqual(reply["code"], "PropertyConstraintViolation")
        self.assertEqual(len(self.target.calls), 2)

    def test_a_station_exception_becomes_an_error_reply(self):
        def broken(now_ms, session_id=None, sent_at=None):
            raise KeyError("oops")
        self.target.cmd_stop = broken
        reply = self.d.handle(cmd("stop"), NOW)
        self.assertIs(reply["ok"], False)
        self.assertIn("internal error", reply["error"])

    def test_get_config_never_shows_a_secret(self):
        self.target.cfg.update({"mqtt_password": "hunter2", "wifi_password": "depot-pw1"})
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
        reply = self.d.handle(cmd("set_config", {"changes": {
            "max_current_ma": 16000, "wifi_password": "new-passphrase"}}), NOW)
        self.assertIs(reply["ok"], True)
        self.assertEqual(reply["data"]["keys"], ["max_current_ma", "wifi_password"])
        self.assertEqual(reply["data"]["reboot_required"], ["wifi_password"])
        self.assertFalse("new-passphrase" in json.dumps(reply))
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
        # Both are trust settings: the owner signs them (firmware/owner.py).
        self.target.cfg.update({"owner_key": KEY_HEX})
        d = CommandDispatcher(self.target, lambda: WALL, None, self.target.cfg, "cp-0001")
        for key, value in (("station_id", "b\u00fcro-7"), ("mqtt_prefix", "site/a")):
            payload = cmd("set_config", {"changes": {key: value}}, expires_at=WALL + 60)
            reply = d.handle(owner.sign(payload, "cp-0001", KEY), NOW)
            self.assertIs(reply["ok"], True, value)
        Topics(self.target.cfg["mqtt_prefix"], self.target.cfg["station_id"])

    def test_diagnostics_returns_the_snapshot(self):
        reply = self.d.handle(cmd("diagnostics"), NOW)
        self.assertEqual(reply["data"], {"uptime_s": 12, "heap_free": 40000})

    def test_command_names_are_the_documented_set(self):
        from firmware import command_parse
        self.assertEqual(tuple(sorted(command_parse.COMMANDS)),
                         ("authorize", "clear_fault", "diagnostics", "get_config", "reboot",
                          "selftest", "set_availability", "set_config", "set_limit", "start",
                          "stop"))


EMOJI = "\U0001F600"                  # 4 bytes in UTF-8, a surrogate pair in a \u escape


def wire(reply):
    """The reply as published: must be strict RFC 8259 JSON in valid UTF-8."""
    out = messages.encode(reply)
    strictjson.validate(out)
    return out


class Utf8InAndOut(unittest.TestCase):
    def setUp(self):
        self.target = RecordingTarget()
        self.d = CommandDispatcher(self.target)

    def round_trip(self, raw_id):
        reply = self.d.handle(b'{"id": "' + raw_id + b'", "cmd": "start"}', NOW)
        self.assertIs(reply["ok"], True, raw_id)
        return reply, json.loads(wire(reply))

    def test_non_ascii_ids_come_back_as_sent(self):
        for raw, text in ((b"c-\xc3\xa9", "c-\u00e9"), (b"\xe2\x82\xac7", "\u20ac7"),
                          (b"\xf0\x9f\x98\x80", EMOJI), (b"\\u00e9", "\u00e9"),
                          (b"\\ud83d\\ude00-\\uD834\\uDD1E", EMOJI + "-\U0001D11E"),
                          (b"a\\u0000b", "a\x00b"), (b"\xf4\x8f\xbf\xbf", "\U0010FFFF")):
            reply, echoed = self.round_trip(raw)
            self.assertEqual(reply["id"], text)
            self.assertEqual(echoed["id"], text)

    def test_an_escaped_pair_and_the_raw_character_are_the_same_id(self):
        # MicroPython's json.loads alone would make the escaped form two CESU-8 halves.
        _, a = self.round_trip(b"\\ud83d\\ude00")
        _, b = self.round_trip(b"\xf0\x9f\x98\x80")
        self.assertEqual(a["id"], b["id"])
        self.assertEqual(len(a["id"]), 1)

    def test_the_id_limit_counts_characters(self):
        for raw in (b"\xf0\x9f\x98\x80" * 64, b"\\ud83d\\ude00" * 64, b"\xc3\xa9" * 64):
            reply, echoed = self.round_trip(raw)
            self.assertEqual(len(reply["id"]), 64)
            self.assertEqual(echoed["id"], reply["id"])
        self.assertEqual(self.round_trip(b"\xf0\x9f\x98\x80" * 64)[0]["id"], EMOJI * 64)

    def test_invalid_utf8_is_refused_and_never_quoted(self):
        for bad in (b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                    b"\xed\xa0\xbd\xed\xb8\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\x80",
                    b"\xff", b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xe9t\xe9"):
            for payload in (b'{"id": "' + bad + b'", "cmd": "start"}',
                            b'{"id": "c-1", "cmd": "' + bad + b'"}',
                            b'{"id": "c-1", "cmd": "start", "' + bad + b'": 1}',
                            b'{"id": "c-1", "cmd": "authorize", "args": {"id_tag": "'
                            + bad + b'"}}'):
                reply = self.d.handle(payload, NOW)
                self.assertIs(reply["ok"], False)
                self.assertIsNone(reply["id"])
                self.assertIsNone(reply["cmd"])
                self.assertTrue(reply["error"].startswith("not valid JSON: byte "), payload)
                self.assertTrue("invalid UTF-8" in reply["error"], payload)
                for byte in wire(reply):
                    self.assertTrue(byte < 0x80, payload)
        self.assertEqual(self.target.calls, [])

    def test_a_quoted_non_ascii_name_stays_valid_utf8(self):
        # Error reasons quote unknown names (cut to 40 characters, never inside a character).
        for name in ("\u00e9clair", EMOJI * 50, "\\ud83d\\ude00" * 50):
            payload = b'{"id": "c-1", "cmd": "' + name.encode() + b'"}'
            reply = self.d.handle(payload, NOW)
            self.assertIn("unknown command", reply["error"])
            wire(reply)
        reply = self.d.handle(b'{"id": "c-1", "cmd": "start", "\xf0\x9f\x98\x80": 1}', NOW)
        self.assertEqual(reply["error"], "unknown field " + EMOJI)
        wire(reply)


class LimitsBelowSixAmpsPause(unittest.TestCase):
    # IEC 61851-1: no duty offers less than 6 A; the charger takes such a limit as a pause
    # (PWM off, x1). The command passes it on and the reply says so.
    def test_every_limit_from_0_to_80000_reaches_the_station(self):
        target = RecordingTarget()
        d = CommandDispatcher(target)
        for limit, paused in ((0, True), (1, True), (3000, True), (5999, True),
                              (6000, False), (16000, False), (80000, False)):
            reply = d.handle(cmd("set_limit", {"limit_ma": limit}), NOW)
            self.assertIs(reply["ok"], True, limit)
            self.assertEqual(reply["data"], {"limit_ma": limit, "paused_by_limit": paused})
            self.assertEqual(target.calls[-1], ("set_limit", limit, None))
        self.assertEqual(d.accepted, 7)

    def test_a_refusal_by_the_station_carries_no_data(self):
        target = RecordingTarget()
        target.refuse["set_limit"] = "storage failed"
        reply = CommandDispatcher(target).handle(cmd("set_limit", {"limit_ma": 3000}), NOW)
        self.assertEqual((reply["ok"], reply["error"]), (False, "storage failed"))
        self.assertFalse("data" in reply)


# -- the backend contract: error codes, exactly once, expiry, authority ----------------------

class FakeStore:
    """A Store stand-in for the ledger (read / write_atomic), counting writes."""

    def __init__(self):
        self.files = {}
        self.writes = 0

    def read(self, name):
        return self.files.get(name)

    def write_atomic(self, name, data):
        self.writes += 1
        self.files[name] = bytes(data)


class ErrorRepliesCarryAStableCode(unittest.TestCase):
    def test_every_malformed_command_has_a_documented_code(self):
        d = CommandDispatcher(RecordingTarget())
        for payload, _ in MALFORMED:
            reply = d.handle(payload, NOW)
            self.assertTrue(reply["code"] in commands.ERROR_CODES, (payload, reply))

    def test_codes_follow_ocpp_callerror_meanings(self):
        d = CommandDispatcher(RecordingTarget())
        for payload, code in (
                (b"garbage", "FormationViolation"),
                (b"[1]", "FormationViolation"),
                (b'{"cmd": "start"}', "ProtocolError"),
                (cmd("start", v=2), "NotSupported"),
                (cmd("explode"), "NotImplemented"),
                (cmd("start", extra=1), "OccurrenceConstraintViolation"),
                (cmd("authorize"), "OccurrenceConstraintViolation"),
                (cmd("set_limit", {"limit_ma": "16A"}), "TypeConstraintViolation"),
                (cmd("set_limit", {"limit_ma": 80001}), "PropertyConstraintViolation"),
                (cmd("set_availability", {"availability": "x"}), "PropertyConstraintViolation"),
                (cmd("start", {"connector_id": 9}), "PropertyConstraintViolation")):
            self.assertEqual(d.handle(payload, NOW)["code"], code, payload)

    def test_a_station_refusal_carries_the_station_code(self):
        target = RecordingTarget()
        target.refuse["start"] = ("NO_EV", "no EV connected")
        reply = CommandDispatcher(target).handle(cmd("start"), NOW)
        self.assertEqual((reply["ok"], reply["code"], reply["error"]),
                         (False, "NO_EV", "no EV connected"))
        target.refuse["stop"] = "something odd"               # a bare reason
        reply = CommandDispatcher(target).handle(cmd("stop"), NOW)
        self.assertEqual(reply["code"], "GenericError")

    def test_replies_carry_utc_time_or_say_the_clock_is_not_set(self):
        reply = CommandDispatcher(RecordingTarget(), lambda: WALL).handle(cmd("stop"), NOW)
        self.assertEqual(reply["time"], WALL)
        reply = CommandDispatcher(RecordingTarget()).handle(cmd("stop"), NOW)
        self.assertTrue("time" in reply and reply["time"] is None)
        self.assertFalse("code" in reply)                     # ok replies have none

    def test_start_takes_an_id_tag_and_a_connector_like_a_remote_start(self):
        target = RecordingTarget()
        d = CommandDispatcher(target, cfg=Config({"connector_id": 2}))
        self.assertIs(d.handle(cmd("start", {"id_tag": "04A2", "connector_id": 2}), NOW)["ok"], True)
        self.assertEqual(target.calls[-1], ("start", "04A2", 2))
        reply = d.handle(cmd("start", {"id_tag": "04A2", "connector_id": 1}, corr="c-2"), NOW)
        self.assertEqual(reply["code"], "PropertyConstraintViolation")
        self.assertEqual(len(target.calls), 1)


class ExactlyOnce(unittest.TestCase):
    def setUp(self):
        from firmware.ledger import Ledger
        self.store = FakeStore()
        self.Ledger = Ledger
        self.target = RecordingTarget()
        self.d = CommandDispatcher(self.target, lambda: WALL, Ledger(self.store))

    def test_a_repeated_id_is_answered_with_the_first_reply_and_not_run_again(self):
        first = self.d.handle(cmd("set_limit", {"limit_ma": 10000, "expires_s": 60}), NOW)
        again = self.d.handle(cmd("set_limit", {"limit_ma": 10000, "expires_s": 60}), NOW + 5)
        self.assertEqual(self.target.calls, [("set_limit", 10000, 60)])
        self.assertIs(again.pop("duplicate"), True)
        self.assertEqual(again, first)
        # The id counts, not the content: another command under the same id is not run.
        self.d.handle(cmd("reboot"), NOW)
        self.assertEqual(len(self.target.calls), 1)
        self.assertEqual((self.d.accepted, self.d.duplicates), (1, 2))

    def test_a_refused_command_is_answered_with_its_refusal_again(self):
        self.target.refuse["start"] = ("NO_EV", "no EV connected")
        first = self.d.handle(cmd("start", corr=7), NOW)
        self.target.refuse.clear()
        again = self.d.handle(cmd("start", corr=7), NOW)
        self.assertEqual((again["ok"], again["code"]), (False, "NO_EV"))
        self.assertEqual(again["time"], first["time"])
        self.assertEqual(len(self.target.calls), 1)
        # The integer id 7 and the string "7" are different ids.
        self.assertIs(self.d.handle(cmd("start", corr="7"), NOW)["ok"], True)

    def test_the_window_is_the_last_16_commands(self):
        for i in range(17):
            self.d.handle(cmd("stop", corr="w-%d" % i), NOW)
        self.d.handle(cmd("stop", corr="w-1"), NOW)        # still in the window
        self.assertEqual(len(self.target.calls), 17)
        self.d.handle(cmd("stop", corr="w-0"), NOW)        # pushed out by the 17th
        self.assertEqual(len(self.target.calls), 18)

    def test_the_ring_survives_a_reset_between_execution_and_reply(self):
        self.d.handle(cmd("reboot", corr="r-1"), NOW)
        self.assertEqual(self.store.writes, 1)           # on flash before the reply goes out
        target = RecordingTarget()
        d = CommandDispatcher(target, lambda: WALL, self.Ledger(self.store))
        reply = d.handle(cmd("reboot", corr="r-1"), NOW)  # the broker delivers it again
        self.assertEqual(target.calls, [])
        self.assertIs(reply["ok"], True)
        self.assertIs(reply["duplicate"], True)

    def test_read_only_and_malformed_commands_are_not_recorded(self):
        self.d.handle(cmd("get_config", corr="g"), NOW)
        self.d.handle(cmd("get_config", corr="g"), NOW)
        self.d.handle(cmd("set_limit", {"limit_ma": -1}, corr="m"), NOW)
        self.assertEqual(self.store.writes, 0)
        self.assertEqual(self.target.calls, [("get_config", None), ("get_config", None)])
        # A corrected command under the id of a rejected one runs.
        self.assertIs(self.d.handle(cmd("set_limit", {"limit_ma": 6000}, corr="m"), NOW)["ok"], True)

    def test_a_damaged_ring_file_is_an_empty_ring(self):
        self.store.files["commands.done"] = b"[[1, "
        led = self.Ledger(self.store)
        self.assertEqual(len(led), 0)
        self.assertIsNotNone(led.error)

    def test_a_large_reply_is_kept_without_its_data(self):
        target = RecordingTarget()
        target.cmd_clear_fault = lambda name, now_ms: None
        d = CommandDispatcher(target, None, self.Ledger())
        changes = {"tariff_id": "t" * 32, "currency": "CHF", "price_per_kwh_minor": 1,
                   "price_per_min_charging_minor": 1, "price_per_min_idle_minor": 1,
                   "idle_grace_min": 1, "session_fee_minor": 1, "meter_poll_ms": 2000,
                   "meter_timeout_ms": 400, "meter_retries": 2, "telemetry_interval_s": 30}
        first = d.handle(cmd("set_config", {"changes": changes}), NOW)
        self.assertTrue(len(messages.encode(first)) > 256)
        again = d.handle(cmd("set_config", {"changes": changes}), NOW)
        self.assertEqual((again["ok"], again["duplicate"], "data" in again), (True, True, False))


class StaleCommandsAreRefused(unittest.TestCase):
    def setUp(self):
        self.target = RecordingTarget()
        self.clock = [WALL]
        self.d = CommandDispatcher(self.target, lambda: self.clock[0])

    def test_expires_at_and_ttl(self):
        self.assertIs(self.d.handle(cmd("start", expires_at=WALL + 1), NOW)["ok"], True)
        self.assertIs(self.d.handle(cmd("start", expires_at=WALL), NOW)["ok"], True)
        reply = self.d.handle(cmd("start", expires_at=WALL - 1, corr="late"), NOW)
        self.assertEqual((reply["ok"], reply["code"], reply["id"]), (False, "EXPIRED", "late"))
        self.assertIs(self.d.handle(cmd("stop", sent_at=WALL - 50, ttl_s=60), NOW)["ok"], True)
        reply = self.d.handle(cmd("stop", sent_at=WALL - 3600, ttl_s=60), NOW)
        self.assertEqual(reply["code"], "EXPIRED")
        self.assertEqual(len(self.target.calls), 3)
        self.assertEqual(self.d.rejected, 2)

    def test_expiry_fields_are_checked(self):
        for extra, code in (({"ttl_s": 60}, "OccurrenceConstraintViolation"),
                            ({"sent_at": WALL, "ttl_s": 0}, "PropertyConstraintViolation"),
                            ({"expires_at": "soon"}, "TypeConstraintViolation"),
                            ({"expires_at": -5}, "PropertyConstraintViolation")):
            self.assertEqual(self.d.handle(cmd("start", **extra), NOW)["code"], code, extra)
        self.assertEqual(self.target.calls, [])

    def test_without_a_clock_an_expiring_command_is_refused(self):
        d = CommandDispatcher(self.target)
        reply = d.handle(cmd("start", expires_at=WALL + 60), NOW)
        self.assertEqual(reply["code"], "CLOCK_NOT_SET")
        self.assertIs(d.handle(cmd("start"), NOW)["ok"], True)    # no expiry: runs


class OnlyTheOwnerChangesTrustSettings(unittest.TestCase):
    def setUp(self):
        self.cfg = Config({"owner_key": KEY_HEX, "mqtt_host": "broker.example"})
        self.target = RecordingTarget(self.cfg)
        self.d = CommandDispatcher(self.target, lambda: WALL, None, self.cfg, "cp-0001")

    def set_config(self, changes, key=KEY, station="cp-0001", expires=WALL + 300, corr="c-1"):
        payload = cmd("set_config", {"changes": changes}, corr=corr, expires_at=expires)
        if key is not None:
            payload = owner.sign(payload, station, key)
        return self.d.handle(payload, NOW)

    def test_an_unsigned_trust_change_is_refused(self):
        for key, value in (("mqtt_host", "evil.example"), ("mqtt_port", 1884),
                           ("mqtt_tls", False), ("mqtt_ca_file", "x.pem"),
                           ("mqtt_password", "pw"), ("owner_key", "0" * 64),
                           ("mqtt_plain_credentials", True), ("station_id", "cp-9")):
            reply = self.set_config({key: value}, key=None)
            self.assertEqual((reply["ok"], reply["code"]), (False, "OWNER_ONLY"), key)
            self.assertIn(key, reply["error"])
        self.assertEqual(self.target.calls, [])
        self.assertEqual(self.cfg["mqtt_host"], "broker.example")
        # Other settings need no signature.
        self.assertIs(self.set_config({"max_current_ma": 16000}, key=None)["ok"], True)

    def test_a_signed_change_by_the_owner_is_applied(self):
        reply = self.set_config({"mqtt_host": "new.example", "mqtt_port": 8883,
                                 "mqtt_tls": True, "mqtt_ca_file": "ca.pem"})
        self.assertIs(reply["ok"], True, reply)
        self.assertEqual(self.cfg["mqtt_host"], "new.example")
        # The signature check was imported for it and is unloaded again.
        import sys
        self.assertFalse("firmware.owner" in sys.modules)
        self.assertEqual(len(owner.sign(cmd("stop"), "cp-0001", KEY).rsplit(b'"', 2)[1]), 64)

    def test_a_wrong_key_a_wrong_station_or_a_changed_byte_is_refused(self):
        for kw in ({"key": bytes(32)}, {"station": "cp-0002"}):
            reply = self.set_config({"mqtt_host": "evil.example"}, **kw)
            self.assertEqual(reply["code"], "SecurityError", kw)
        payload = owner.sign(cmd("set_config", {"changes": {"mqtt_port": 1883}},
                                 expires_at=WALL + 60), "cp-0001", KEY)
        reply = self.d.handle(payload.replace(b"1883", b"1884"), NOW)
        self.assertEqual(reply["code"], "SecurityError")
        # A sig member that is not the last one does not verify either.
        reply = self.d.handle(cmd("stop", sig="0" * 64), NOW)
        self.assertEqual(reply["code"], "SecurityError")
        self.assertEqual(self.target.calls, [])
        self.assertEqual(self.cfg["mqtt_host"], "broker.example")

    def test_a_signed_command_needs_a_near_expiry_and_a_clock(self):
        reply = self.set_config({"mqtt_port": 1884}, expires=None)
        self.assertEqual(reply["code"], "SecurityError")
        reply = self.set_config({"mqtt_port": 1884}, expires=WALL + 7200)
        self.assertEqual(reply["code"], "SecurityError")
        reply = self.set_config({"mqtt_port": 1884}, expires=WALL - 1)
        self.assertEqual(reply["code"], "EXPIRED")
        d = CommandDispatcher(self.target, None, None, self.cfg, "cp-0001")
        payload = owner.sign(cmd("set_config", {"changes": {"mqtt_port": 1884}},
                                 expires_at=WALL + 60), "cp-0001", KEY)
        self.assertEqual(d.handle(payload, NOW)["code"], "CLOCK_NOT_SET")
        self.assertEqual(self.cfg["mqtt_port"], 1883)

    def test_without_a_provisioned_key_trust_settings_change_only_in_service_mode(self):
        cfg = Config({})
        d = CommandDispatcher(RecordingTarget(cfg), lambda: WALL, None, cfg, "cp-0001")
        payload = owner.sign(cmd("set_config", {"changes": {"mqtt_port": 1884}},
                                 expires_at=WALL + 60), "cp-0001", KEY)
        self.assertEqual(d.handle(payload, NOW)["code"], "SecurityError")
        self.assertEqual(cfg["mqtt_port"], 1883)

    def test_credentials_never_travel_without_tls_unless_allowed_locally(self):
        reply = self.set_config({"mqtt_password": "s3cret"})      # signed, but plain MQTT
        self.assertEqual(reply["code"], "INSECURE")
        reply = self.set_config({"wifi_password": "s3cret-passphrase"}, key=None, corr="c-2")
        self.assertEqual(reply["code"], "INSECURE")
        self.assertEqual(self.cfg["mqtt_password"], "")
        self.cfg.update({"mqtt_tls": True, "mqtt_ca_file": "ca.pem"})
        self.assertIs(self.set_config({"mqtt_password": "s3cret"}, corr="c-3")["ok"], True)
        cfg = Config({"owner_key": KEY_HEX, "mqtt_plain_credentials": True})
        d = CommandDispatcher(RecordingTarget(cfg), lambda: WALL, None, cfg, "cp-0001")
        reply = d.handle(cmd("set_config", {"changes": {"wifi_password": "plain-site-pw"}}), NOW)
        self.assertIs(reply["ok"], True)


class HmacSha256(unittest.TestCase):
    def test_rfc_4231_vectors(self):
        import binascii
        for key, data, mac in (
                (b"\x0b" * 20, b"Hi There",
                 "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
                (b"Jefe", b"what do ya want for nothing?",
                 "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
                (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
                 "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")):
            self.assertEqual(binascii.hexlify(owner.hmac_sha256(key, data)).decode(), mac)


class RetainedCommands(unittest.TestCase):
    def test_the_refusal_of_a_retained_command_carries_its_id(self):
        target = RecordingTarget()
        d = CommandDispatcher(target)
        reply = d.refuse_unread(cmd("reboot", corr="old-1"), "retained commands are not accepted",
                                commands.RETAINED)
        self.assertEqual((reply["id"], reply["cmd"], reply["code"]), ("old-1", "reboot", "RETAINED"))
        reply = d.refuse_unread(b"garbage", "retained commands are not accepted", commands.RETAINED)
        self.assertEqual((reply["id"], reply["code"]), (None, "RETAINED"))
        self.assertEqual(target.calls, [])


class ParserLeavesTheHeap(unittest.TestCase):
    # firmware/command_parse.py is imported for each command and unloaded after it: between
    # commands its tables and functions are not in the heap.
    def setUp(self):
        from firmware.compat import unload
        unload("firmware.command_parse")
        self.target = RecordingTarget()
        self.d = CommandDispatcher(self.target)

    def test_not_imported_after_a_command_a_refusal_or_a_parse(self):
        import sys
        import firmware
        for call in (lambda: self.d.handle(cmd("set_limit", {"limit_ma": 10000}), NOW),
                     lambda: self.d.handle(b"{not json", NOW),
                     lambda: self.d.refuse_unread(cmd("reboot"), "retained", "RETAINED"),
                     lambda: parse(cmd("stop"))):
            call()
            for name in ("command_parse", "owner"):
                self.assertFalse("firmware." + name in sys.modules, name)
                self.assertFalse(name in firmware.__dict__, name)
        self.assertEqual(self.target.calls[0][0], "set_limit")

    def test_the_heap_is_back_where_it_was_after_a_command(self):
        import gc
        if not hasattr(gc, "mem_alloc"):
            raise unittest.SkipTest("gc.mem_alloc: MicroPython")
        self.d.handle(cmd("set_limit", {"limit_ma": 10000}, "warm"), NOW)
        gc.collect()
        before = gc.mem_alloc()
        from firmware import command_parse      # what an import holds: some 900 B
        gc.collect()
        held = gc.mem_alloc() - before
        del command_parse
        from firmware.compat import unload
        unload("firmware.command_parse")
        self.d.handle(cmd("set_limit", {"limit_ma": 12000}, "again"), NOW)
        gc.collect()
        after = gc.mem_alloc()
        self.assertTrue(held > 512, held)
        # The reply and the call's record stay (the target keeps them): a few hundred bytes.
        self.assertTrue(after - before < held // 2, (after - before, held))
