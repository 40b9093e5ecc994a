# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The OCPP 1.6J parts that need no network: RPC framing and its CallErrors, the router, the
# configuration keys, timestamps and the transaction log on flash.
import json
import sys
import unittest

from firmware.config import Config
from firmware.ocpp16 import clock, keys, rpc, router
from firmware.ocpp16.txlog import TxLog
from firmware.ramfs import RamFs
from firmware.storage import Store


class Framing(unittest.TestCase):
    def test_decode_the_three_message_types(self):
        self.assertEqual(rpc.decode(b'[2,"a1","Heartbeat",{}]'), (2, "a1", "Heartbeat", {}))
        self.assertEqual(rpc.decode(b'[3,"a1",{"currentTime":"x"}]'),
                         (3, "a1", {"currentTime": "x"}, None))
        self.assertEqual(rpc.decode(b'[4,"a1","NotSupported","no",{}]'),
                         (4, "a1", "NotSupported", "no"))

    def test_malformed_messages_are_formation_violations(self):
        for raw in (b"not json", b'{"a": 1}', b"[2]", b'[2, 7, "X", {}]', b'[2,"",  "X", {}]',
                    b'[2,"%s","X",{}]' % (b"9" * 37), b"[2,\"1\",\"X\",{}] trailing"):
            with self.assertRaises(rpc.CallError) as ctx:
                rpc.decode(raw)
            self.assertEqual(ctx.exception.code, rpc.FORMATION)

    def test_a_readable_id_is_kept_for_the_error_reply(self):
        for raw in (b'[2,"k9","Reset",[]]', b'[7,"k9",{}]'):
            with self.assertRaises(rpc.CallError) as ctx:
                rpc.decode(raw)
            self.assertEqual(ctx.exception.uid, "k9")

    def test_encoded_frames_are_json_arrays(self):
        self.assertEqual(json.loads(rpc.encode_call("5", "Heartbeat", {})), [2, "5", "Heartbeat", {}])
        self.assertEqual(json.loads(rpc.encode_result("5", {"status": "Accepted"})),
                         [3, "5", {"status": "Accepted"}])
        self.assertEqual(json.loads(rpc.encode_error("5", rpc.NOT_SUPPORTED, "x")),
                         [4, "5", "NotSupported", "x", {}])

    def test_messages_in_pieces_are_the_messages_as_one(self):
        payload = {"connectorId": 1, "transactionId": 1001, "meterValue": [
            {"timestamp": "2026-01-05T08:00:00Z", "sampledValue": [
                {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "16.000", "phase": "L1", "unit": "A"}]}],
            "empty": {}, "none": [], "flags": [True, False, None], "idTag": "Caf\u00e9\"x"}
        parts = list(rpc.call_pieces("17", "MeterValues", payload))
        self.assertEqual(json.loads("".join(parts)), [2, "17", "MeterValues", payload])
        # Containers of containers are split; one of scalars is one piece.
        self.assertTrue(max(len(p) for p in parts) < 90, parts)
        one = [p for p in parts if "16.000" in p]
        self.assertEqual(len(one), 1, parts)
        self.assertEqual(json.loads(one[0]), {"value": "16.000", "phase": "L1", "unit": "A"})
        res = "".join(rpc.result_pieces("18", {"status": "Accepted"}))
        self.assertEqual(json.loads(res), [3, "18", {"status": "Accepted"}])

    def test_a_call_begun_is_in_flight_until_answered(self):
        c = rpc.Caller()
        uid = c.begin("Heartbeat", "ctx", 0, 1000)
        self.assertTrue(c.busy() and c.action == "Heartbeat" and c.context == "ctx")
        c.cancel()
        self.assertFalse(c.busy())
        self.assertNotEqual(c.begin("Heartbeat", None, 0, 1000), uid)

    def test_field_checks_name_the_violation(self):
        p = {"connectorId": "1", "idTag": "X" * 21}
        for key, kind, code in (("missing", int, rpc.OCCURRENCE), ("connectorId", int, rpc.TYPE)):
            with self.assertRaises(rpc.CallError) as ctx:
                rpc.field(p, key, kind)
            self.assertEqual(ctx.exception.code, code)
        with self.assertRaises(rpc.CallError) as ctx:
            rpc.field(p, "idTag", str, max_len=20)
        self.assertEqual(ctx.exception.code, rpc.PROPERTY)
        self.assertEqual(rpc.field({"b": True}, "b", bool), True)
        with self.assertRaises(rpc.CallError):
            rpc.field({"n": True}, "n", int)          # a bool is not an integer


class Caller(unittest.TestCase):
    def test_one_call_in_flight_answered_by_its_id_or_timed_out(self):
        c = rpc.Caller()
        frame = json.loads(c.start("Heartbeat", {}, None, 0, 1000))
        self.assertTrue(c.busy())
        self.assertFalse(c.answered("other"))
        self.assertFalse(c.timed_out(999))
        self.assertTrue(c.answered(frame[1]))
        self.assertFalse(c.busy())
        frame2 = json.loads(c.start("Heartbeat", {}, None, 2000, 1000))
        self.assertNotEqual(frame[1], frame2[1])
        self.assertTrue(c.timed_out(3000))
        self.assertEqual(c.timeouts, 1)
        self.assertFalse(c.answered(frame2[1]))     # too late: no longer in flight


class _NoBackend:
    pass


class Router(unittest.TestCase):
    def test_unknown_action_not_implemented_known_unsupported_not_supported(self):
        for action, code in (("FlyToTheMoon", rpc.NOT_IMPLEMENTED),
                             ("ReserveNow", rpc.NOT_SUPPORTED),
                             ("UpdateFirmware", rpc.NOT_SUPPORTED)):
            with self.assertRaises(rpc.CallError) as ctx:
                router.dispatch(_NoBackend(), action, {}, 0)
            self.assertEqual(ctx.exception.code, code)

    def test_rare_operations_leave_no_module_behind(self):
        b = _NoBackend()
        b.cfg = Config()
        out = router.dispatch(b, "GetConfiguration", {"key": ["HeartbeatInterval"]}, 0)
        self.assertEqual(json.loads("".join(out())), {"configurationKey": [
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]})
        self.assertFalse("get_configuration" in router.resident())
        self.assertFalse("firmware.ocpp16.keys" in sys.modules)     # its helper went too
        out = router.dispatch(b, "DataTransfer", {"vendorId": "com.example"}, 0)
        self.assertEqual(out, {"status": "UnknownVendorId"})
        with self.assertRaises(rpc.CallError) as ctx:
            router.dispatch(b, "DataTransfer", {}, 0)
        self.assertEqual(ctx.exception.code, rpc.OCCURRENCE)
        self.assertFalse("data_transfer" in router.resident())


class Keys(unittest.TestCase):
    def test_every_key_reads_and_the_secret_never_shows(self):
        cfg = Config({"ocpp_password": "0123456789abcdef"})
        known, unknown = keys.get(cfg, None)
        names = [k["key"] for k in known]
        self.assertFalse("AuthorizationKey" in names)
        self.assertEqual(unknown, [])
        for k in known:
            self.assertTrue(isinstance(k["value"], str))
            self.assertFalse("0123456789abcdef" in k["value"])
        byname = {k["key"]: k for k in known}
        self.assertEqual(byname["SupportedFeatureProfiles"]["value"], keys.PROFILES)
        self.assertTrue(byname["NumberOfConnectors"]["readonly"])
        known, unknown = keys.get(cfg, ["AuthorizationKey", "Nope"])
        self.assertEqual((known, unknown), ([], ["AuthorizationKey", "Nope"]))

    def test_get_configuration_in_pieces_is_the_answer_as_one(self):
        b = _NoBackend()
        b.cfg = Config({"ocpp_password": "0123456789abcdef"})
        for names in (None, [], ["HeartbeatInterval", "Nope", "AuthorizationKey",
                                 "SupportedFeatureProfiles", "Caf\u00e9 \"x\""]):
            answer = router.dispatch(b, "GetConfiguration", {} if names is None else
                                     {"key": names}, 0)
            known, unknown = keys.get(b.cfg, names)
            want = {"configurationKey": known}
            if unknown:
                want["unknownKey"] = unknown
            pieces = list(answer())
            self.assertTrue(len(pieces) >= 3)
            self.assertEqual(json.loads("".join(pieces)), want)
            # As the backend sends it: one CALLRESULT frame.
            text = "".join(rpc.result_pieces("u1", answer))
            self.assertEqual(json.loads(text), [3, "u1", want])
        self.assertEqual(len(keys.get(b.cfg, None)[0]), 31)

    def test_the_documentation_names_the_profiles_and_every_key(self):
        with open("docs/ocpp.md") as f:
            doc = f.read()
        self.assertTrue("`SupportedFeatureProfiles` = `%s`." % keys.PROFILES in doc)
        for row in keys.KEYS:
            self.assertTrue(row[0] in doc, row[0])
        for op, _module, _r in router.OPERATIONS:
            self.assertTrue("| " + op + " |" in doc, op)

    def test_change_maps_to_a_setting_or_says_why_not(self):
        self.assertEqual(keys.setting_for("HeartbeatInterval", "60"), ("ocpp_heartbeat_s", 60))
        self.assertEqual(keys.setting_for("HeartbeatInterval", "1.5"), "Rejected")
        self.assertEqual(keys.setting_for("HeartbeatInterval", "abc"), "Rejected")
        self.assertEqual(keys.setting_for("NumberOfConnectors", "2"), "Rejected")
        self.assertEqual(keys.setting_for("NoSuchKey", "2"), "NotSupported")
        self.assertEqual(keys.setting_for("AuthorizationKey", "secret-secret-16"),
                         ("ocpp_password", "secret-secret-16"))


class Clock(unittest.TestCase):
    def test_iso_and_back(self):
        for secs, text in ((0, "1970-01-01T00:00:00Z"), (1767600000, "2026-01-05T08:00:00Z"),
                           (951782400, "2000-02-29T00:00:00Z"),
                           (4102444799, "2099-12-31T23:59:59Z")):
            self.assertEqual(clock.iso(secs), text)
            self.assertEqual(clock.parse(text), secs)
        self.assertEqual(clock.parse("2026-01-05T09:00:00.250+01:00"), 1767600000)
        for bad in ("2026-01-05", "2026-01-05T08:00:00", "yesterday", 5):
            with self.assertRaises(ValueError):
                clock.parse(bad)


class TransactionLog(unittest.TestCase):
    def setUp(self):
        self.fs = RamFs()

    def log(self):
        return TxLog(Store("/data", self.fs))

    def test_messages_in_order_with_the_id_filled_in_at_delivery(self):
        log = self.log()
        nr = log.start("CARD", 100, 1000)
        log.meter(1010, 110, 7200, [10000, 10000, 10000], [2300, 2300, 2300])
        log.stop(130, 1020, "EVDisconnected")
        self.assertEqual(log.pending(), 3)
        self.assertEqual(log.head(), ["S", nr, "CARD", 100, 1000])
        log.delivered(1001)
        self.assertEqual(log.tx_id(nr), 1001)
        self.assertEqual(log.head()[0], "M")
        log.delivered()
        self.assertEqual(log.head(), ["T", nr, "CARD", 130, 1020, "EVDisconnected"])
        log.delivered()
        self.assertEqual(log.pending(), 0)
        self.assertEqual(log.head(), None)
        self.assertEqual(self.log().pending(), 0)      # compacted: nothing comes back

    def test_a_clock_aligned_sample_keeps_its_context_across_a_reset(self):
        log = self.log()
        nr = log.start("CARD", 100, 1000)
        log.meter(1800, 120, 7200, [1, 2, 3], [4, 5, 6], "C")
        log.meter(1810, 121, 7200, [1, 2, 3], [4, 5, 6])
        log.delivered(5)
        again = self.log()
        self.assertEqual(again.head(), ["M", nr, 1800, 120, 7200, [1, 2, 3], [4, 5, 6], "C"])
        again.delivered()
        self.assertEqual(len(again.head()), 7)          # periodic: no context field
        self.assertEqual(again.running[4], 121)

    def test_pending_messages_and_ids_survive_a_reset(self):
        log = self.log()
        nr = log.start("CARD", 100, 1000)
        log.delivered(77)
        log.meter(1010, 110, None, None, None)
        log.stop(None, 1020, "Local")
        again = self.log()
        self.assertEqual(again.pending(), 2)
        self.assertEqual(again.tx_id(nr), 77)
        self.assertEqual(again.head()[0], "M")
        self.assertEqual(again.running, None)
        self.assertEqual(again.next_nr, nr + 1)

    def test_a_running_transaction_is_found_again_with_its_last_register(self):
        log = self.log()
        nr = log.start("CARD", 100, 1000)
        log.delivered(5)                                # compacts: the Start is gone
        log.meter(1010, 140, 3000, None, None)
        again = self.log()
        self.assertEqual(again.running, [nr, "CARD", 100, 1000, 140])
        self.assertEqual(again.running_tx_id(), 5)
        again.delivered()                               # compacts with the tx still running
        third = self.log()
        self.assertEqual(third.running, [nr, "CARD", 100, 1000, 140])
        self.assertEqual(third.running_tx_id(), 5)
        third.stop(None, 1100, "PowerLoss")             # no reading: the last one stands
        self.assertEqual(third.head(), ["T", nr, "CARD", 140, 1100, "PowerLoss"])

    def test_meter_values_stop_at_capacity_and_the_stop_still_fits(self):
        log = TxLog(Store("/data", self.fs), capacity=10)
        log.start("CARD", 0, 0)
        kept = sum(1 for i in range(20) if log.meter(i, i, 0, None, None))
        self.assertEqual(kept, 5)
        self.assertEqual(log.dropped_meter, 15)
        log.stop(30, 40, "Local")
        self.assertEqual(log.pending(), 7)


if __name__ == "__main__":
    unittest.main()
