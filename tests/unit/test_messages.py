# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import json
import unittest

from firmware import messages
from firmware.messages import MessageError, Topics


class TopicsUnderPrefixAndStation(unittest.TestCase):
    def test_every_topic_is_under_prefix_and_station(self):
        t = Topics("cp", "cp-0001")
        self.assertEqual(t.status, b"cp/cp-0001/status")
        self.assertEqual(t.telemetry, b"cp/cp-0001/telemetry")
        self.assertEqual(t.event, b"cp/cp-0001/event")
        self.assertEqual(t.record, b"cp/cp-0001/record")
        self.assertEqual(t.reply, b"cp/cp-0001/reply")
        self.assertEqual(t.cmd, b"cp/cp-0001/cmd")
        self.assertEqual(t.ack, b"cp/cp-0001/ack")

    def test_wildcards_and_slashes_in_the_station_id_are_refused(self):
        for bad in ("a+b", "a#", "a/b", ""):
            self.assertRaises(MessageError, Topics, "cp", bad)
        self.assertRaises(MessageError, Topics, "cp/#", "x")

    def test_non_ascii_station_id_is_encoded_as_utf8(self):
        self.assertEqual(Topics("cp", "b\u00fcro").cmd, "cp/b\u00fcro/cmd".encode())


class PayloadsCarryTheVersion(unittest.TestCase):
    def decode(self, msg):
        return json.loads(messages.encode(msg))

    def test_status_and_will(self):
        self.assertEqual(self.decode(messages.status({"state": "B1"})),
                         {"v": 1, "online": True, "state": "B1"})
        self.assertEqual(self.decode(messages.will()),
                         {"v": 1, "online": False, "reason": "connection lost"})

    def test_fields_cannot_override_the_header(self):
        self.assertEqual(messages.status({"v": 9, "online": False}), {"v": 1, "online": True})
        self.assertEqual(messages.event("x", {"type": "y"})["type"], "x")

    def test_event_telemetry_record_reply(self):
        self.assertEqual(self.decode(messages.event("state", {"from": "B2", "to": "C2"})),
                         {"v": 1, "type": "state", "from": "B2", "to": "C2", "time": None})
        self.assertEqual(messages.event("state", None, 1767600000)["time"], 1767600000)
        self.assertEqual(self.decode(messages.telemetry({"power_w": 7200})),
                         {"v": 1, "power_w": 7200})
        self.assertEqual(self.decode(messages.record("session", 7, "s-7", {"id": "s-7"})),
                         {"v": 1, "kind": "session", "seq": 7, "id": "s-7", "data": {"id": "s-7"}})
        raw = messages.record_bytes("fault", 8, "fault-8", b'{"name": "RCD_TRIP"}')
        self.assertEqual(json.loads(raw), {"v": 1, "kind": "fault", "seq": 8, "id": "fault-8",
                                           "data": {"name": "RCD_TRIP"}})
        self.assertEqual(self.decode(messages.reply("c1", "start")),
                         {"v": 1, "id": "c1", "cmd": "start", "ok": True, "time": None})
        self.assertEqual(self.decode(messages.reply("c1", "start", "no EV connected", None,
                                                    "NO_EV", 1767600000)),
                         {"v": 1, "id": "c1", "cmd": "start", "ok": False, "code": "NO_EV",
                          "error": "no EV connected", "time": 1767600000})
        self.assertEqual(messages.reply("c1", "start", "odd")["code"], "GenericError")
        self.assertEqual(self.decode(messages.reply(3, "diagnostics", None, {"a": 1}))["data"],
                         {"a": 1})


class AckPayloads(unittest.TestCase):
    def test_valid_acks(self):
        self.assertEqual(messages.parse_ack(b'{"v": 1, "ids": ["s-1", 7]}'), ["s-1", 7])
        self.assertEqual(messages.parse_ack(b'{"ids": ["s-1"]}'), ["s-1"])

    def test_malformed_acks(self):
        for bad in (b"", b"nope", b"[]", b'{"v": 2, "ids": ["a"]}', b'{"ids": []}',
                    b'{"ids": "s-1"}', b'{"ids": [true]}', b'{"ids": [1.5]}',
                    b'{"ids": [null]}', json.dumps({"ids": list(range(33))}).encode(),
                    # Not JSON, though MicroPython's json.loads reads them (strictjson).
                    b'{"ids": ["s-1" "s-2"]}', b'{"ids": ["s-1",]}', b'{"ids": ["s-1"]}\x00',
                    b'{"ids": ["\xc0\xaf"]}'):
            self.assertRaises(MessageError, messages.parse_ack, bad)

    def test_oversized_and_deeply_nested_acks_are_malformed(self):
        # A full ack (32 long ids) fits; anything larger is refused before parsing, and
        # nesting deep enough to exhaust CPython's recursion limit is malformed too.
        full = json.dumps({"v": 1, "ids": ["x" * 100 + str(i) for i in range(32)]}).encode()
        self.assertEqual(len(messages.parse_ack(full)), 32)
        for bad in (b'{"ids": ["' + b"x" * messages.MAX_ACK_BYTES + b'"]}',
                    b'{"ids": [' + b"[" * 2000 + b"]" * 2000 + b']}'):
            self.assertRaises(MessageError, messages.parse_ack, bad)
