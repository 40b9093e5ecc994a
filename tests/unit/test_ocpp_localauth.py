# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The OCPP 1.6 Local Authorization List (firmware/ocpp16/localauth.py) and its two operations,
# SendLocalList and GetLocalListVersion, through the router as the central system calls them.
import unittest

from firmware.auth import ACCEPTED_OFFLINE_LIST, REJECTED_OFFLINE_NOT_IN_LIST, Authorizer
from firmware.config import Config
from firmware.ocpp16 import keys, router, rpc
from firmware.ocpp16.localauth import FILE, LocalList
from firmware.ramfs import RamFs
from firmware.storage import Store

T0 = 1767600000          # 2026-01-05 08:00 UTC


class _Backend:
    def __init__(self, store, cfg, now_s):
        self.cfg = cfg
        self.now_s = now_s
        self.local = LocalList(store, cfg, lambda: self.now_s)


def entry(tag, status=None, expiry=None):
    e = {"idTag": tag}
    if status is not None:
        e["idTagInfo"] = {"status": status}
        if expiry is not None:
            e["idTagInfo"]["expiryDate"] = expiry
    return e


class LocalListTests(unittest.TestCase):
    def setUp(self):
        self.fs = RamFs()
        self.cfg = Config({"auth_list_max": 5})
        self.b = _Backend(self.store(), self.cfg, T0)

    def store(self):
        return Store("/data", self.fs)

    def send(self, version, kind, entries):
        return router.dispatch(self.b, "SendLocalList",
                               {"listVersion": version, "updateType": kind,
                                "localAuthorizationList": entries}, 0)["status"]

    def version(self):
        return router.dispatch(self.b, "GetLocalListVersion", {}, 0)["listVersion"]

    def test_full_then_differential_updates_with_versions(self):
        self.assertEqual(self.version(), 0)
        self.assertEqual(self.send(3, "Full", [entry("card-a", "Accepted"),
                                               entry("CARD-B", "Blocked"),
                                               entry("NO-INFO")]), "Accepted")
        self.assertEqual(self.version(), 3)
        lst = self.b.local
        self.assertEqual(len(lst), 2)
        self.assertTrue("Card-A" in lst)                # CiString: case-insensitive
        self.assertEqual(lst.status("CARD-B"), "Blocked")
        self.assertFalse("CARD-B" in lst)
        self.assertEqual(lst.status("NO-INFO"), None)
        self.assertEqual(lst.status("CARD"), None)      # a prefix is not a match
        # Differential: not newer -> VersionMismatch, nothing changes.
        self.assertEqual(self.send(3, "Differential", [entry("CARD-C", "Accepted")]),
                         "VersionMismatch")
        self.assertFalse("CARD-C" in lst)
        self.assertEqual(self.send(4, "Differential", [entry("CARD-C", "Accepted"),
                                                       entry("CARD-A"),
                                                       entry("CARD-B", "Accepted")]),
                         "Accepted")
        self.assertEqual(sorted(lst.tags()), ["CARD-B", "CARD-C"])
        self.assertEqual(self.version(), 4)
        # A full update replaces the list whatever its version.
        self.assertEqual(self.send(1, "Full", [entry("CARD-D", "Accepted")]), "Accepted")
        self.assertEqual(lst.tags(), ["CARD-D"])
        # Kept on flash: a restart finds the same list and version.
        again = LocalList(self.store(), self.cfg)
        self.assertEqual((again.version, len(again), again.tags()), (1, 1, ["CARD-D"]))
        self.assertTrue("card-d" in again)
        # An empty full list reports version 0 (OCPP 1.6 5.9).
        self.assertEqual(self.send(7, "Full", []), "Accepted")
        self.assertEqual(self.version(), 0)

    def test_compact_on_flash(self):
        self.send(9, "Full", [entry("CARD-A", "Accepted", "2026-02-01T00:00:00Z"),
                              entry("CARD-B", "Invalid")])
        data = self.store().read(FILE)
        self.assertEqual(data, b"9\nCARD-A A 1769904000\nCARD-B I\n")

    def test_expiry_date_makes_an_entry_expired(self):
        self.send(1, "Full", [entry("SOON", "Accepted", "2026-01-05T08:10:00Z")])
        self.assertTrue("SOON" in self.b.local)
        self.b.now_s = T0 + 600
        self.assertEqual(self.b.local.status("SOON"), "Expired")
        self.assertFalse("SOON" in self.b.local)

    def test_too_long_failed_and_nothing_changes(self):
        self.send(1, "Full", [entry("A%d" % i, "Accepted") for i in range(4)])
        self.assertEqual(self.send(2, "Differential",
                                   [entry("B%d" % i, "Accepted") for i in range(2)]), "Failed")
        self.assertEqual((self.version(), len(self.b.local)), (1, 4))
        with self.assertRaises(rpc.CallError) as ctx:
            self.send(3, "Full", [entry("C%d" % i, "Accepted") for i in range(33)])
        self.assertEqual(ctx.exception.code, rpc.OCCURRENCE)

    def test_malformed_entries_are_call_errors(self):
        for bad, code in (([{"idTag": "A B", "idTagInfo": {"status": "Accepted"}}], rpc.PROPERTY),
                          ([{"idTag": "X" * 21}], rpc.PROPERTY),
                          ([entry("A", "Maybe")], rpc.PROPERTY),
                          ([{"idTag": "A", "idTagInfo": {"status": "Accepted",
                                                         "expiryDate": "soon"}}], rpc.PROPERTY),
                          (["A"], rpc.PROPERTY)):
            with self.assertRaises(rpc.CallError) as ctx:
                self.send(1, "Full", bad)
            self.assertEqual(ctx.exception.code, code, bad)
        self.assertFalse("send_local_list" in router.resident())

    def test_disabled_list_not_supported_and_version_minus_one(self):
        self.send(2, "Full", [entry("CARD-A", "Accepted")])
        self.cfg.set("ocpp_local_list", False)
        self.assertEqual(self.send(3, "Full", []), "NotSupported")
        self.assertEqual(self.version(), -1)
        self.assertFalse("CARD-A" in self.b.local)
        self.cfg.set("ocpp_local_list", True)
        self.assertTrue("CARD-A" in self.b.local)

    def test_the_station_offline_rules_use_the_list(self):
        cfg = Config({"auth_mode": "backend", "offline_policy": "local_list"})
        auth = Authorizer(cfg, self.store())
        b = _Backend(self.store(), cfg, T0)
        auth.allow_list = b.local
        self.b = b
        self.send(1, "Full", [entry("CARD-A", "Accepted"), entry("CARD-B", "Blocked")])
        self.assertEqual(auth.request("card-a", False), (True, ACCEPTED_OFFLINE_LIST))
        self.assertEqual(auth.request("CARD-B", False),
                         (False, REJECTED_OFFLINE_NOT_IN_LIST))
        self.assertEqual(auth.request("CARD-Z", False),
                         (False, REJECTED_OFFLINE_NOT_IN_LIST))


class LocalListKeys(unittest.TestCase):
    def test_keys_of_the_profile(self):
        cfg = Config({"auth_list_max": 100})
        known, unknown = keys.get(cfg, ["LocalAuthListEnabled", "LocalAuthListMaxLength",
                                        "SendLocalListMaxLength", "LocalPreAuthorize"])
        self.assertEqual(unknown, [])
        self.assertEqual([(k["value"], k["readonly"]) for k in known],
                         [("true", False), ("100", True), ("32", True), ("false", False)])
        self.assertTrue("LocalAuthListManagement" in keys.PROFILES.split(","))
        self.assertEqual(keys.setting_for("LocalAuthListEnabled", "FALSE"),
                         ("ocpp_local_list", False))
        self.assertEqual(keys.setting_for("LocalPreAuthorize", "yes"), "Rejected")
        self.assertEqual(keys.setting_for("ClockAlignedDataInterval", "900"),
                         ("ocpp_aligned_interval_s", 900))
        self.assertEqual(keys.setting_for("MeterValuesAlignedData",
                                          "Energy.Active.Import.Register, Voltage"),
                         ("ocpp_aligned_data", "Energy.Active.Import.Register,Voltage"))
        self.assertEqual(keys.setting_for("MeterValuesAlignedData", "SoC"), "Rejected")
        self.assertEqual(keys.setting_for("LocalAuthListMaxLength", "5"), "Rejected")


if __name__ == "__main__":
    unittest.main()
