# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The OCPP 1.6 Authorization Cache (firmware/ocpp16/authcache.py): filled from the central
# system's idTagInfo, used after the Local Authorization List, bounded (least recently used
# dropped), expiring, cleared by ClearCache, switched by AuthorizationCacheEnabled.
import unittest

from firmware.auth import ACCEPTED_OFFLINE_LIST, REJECTED_OFFLINE_NOT_IN_LIST, Authorizer
from firmware.config import Config
from firmware.ocpp16 import keys, router
from firmware.ocpp16.authcache import FILE, AuthCache
from firmware.ocpp16.localauth import LocalList
from firmware.ramfs import RamFs
from firmware.storage import Store

T0 = 1767600000          # 2026-01-05 08:00 UTC


def info(status, expiry=None, parent=None):
    d = {"status": status}
    if expiry is not None:
        d["expiryDate"] = expiry
    if parent is not None:
        d["parentIdTag"] = parent
    return d


class _Backend:
    def __init__(self, store, cfg, now_s, max_entries=4):
        self.cfg = cfg
        self.now_s = now_s
        self.local = LocalList(store, cfg, lambda: self.now_s)
        self.cache = AuthCache(store, cfg, lambda: self.now_s, max_entries)
        self.local.cache = self.cache


class AuthCacheTests(unittest.TestCase):
    def setUp(self):
        self.fs = RamFs()
        self.cfg = Config({"auth_mode": "backend", "offline_policy": "local_list"})
        self.b = _Backend(self.store(), self.cfg, T0)
        self.cache = self.b.cache

    def store(self):
        return Store("/data", self.fs)

    def call(self, action, payload=None):
        return router.dispatch(self.b, action, payload or {}, 0)

    def test_filled_from_id_tag_info_and_kept_on_flash(self):
        self.assertEqual((len(self.cache), self.cache.status("CARD-A")), (0, None))
        self.cache.update("card-a", info("Accepted", "2026-02-01T00:00:00Z", "fleet"))
        self.cache.update("CARD-B", info("Blocked"))
        self.cache.update("CARD-C", {"status": "Maybe"})       # not an idTagInfo: ignored
        self.cache.update("CARD-D", None)
        self.cache.update("CARD-E", info("Accepted", "tomorrow"))  # validity unknown
        self.assertEqual(len(self.cache), 2)
        self.assertEqual(self.store().read(FILE),
                         b"cache 1\nCARD-A A 1769904000 /FLEET\nCARD-B B\n")
        self.assertEqual(self.cache.status("Card-A"), "Accepted")   # CiString
        self.assertEqual(self.cache.status("CARD-B"), "Blocked")
        self.assertEqual(self.cache.status("CARD"), None)           # a prefix is no match
        # The same answer again (StartTransaction.conf after Authorize.conf): no write.
        ops = self.cache.store.ops
        self.cache.update("CARD-B", info("Blocked"))
        self.assertEqual(self.cache.store.ops, ops)
        # A later answer replaces the entry.
        self.cache.update("CARD-B", info("Accepted"))
        self.assertTrue(self.cache.store.ops > ops)
        self.assertEqual((len(self.cache), self.cache.status("CARD-B")), (2, "Accepted"))
        again = AuthCache(self.store(), self.cfg, lambda: T0)
        self.assertEqual((len(again), again.status("CARD-A"), again.damaged), (2, "Accepted", 0))

    def test_expired_entry_is_not_used_and_becomes_expired(self):
        self.cache.update("SOON", info("Accepted", "2026-01-05T08:10:00Z"))
        self.assertTrue("SOON" in self.b.local)
        self.b.now_s = T0 + 600
        self.assertFalse("SOON" in self.b.local)
        self.assertEqual(self.cache.status("SOON"), "Expired")
        self.assertEqual(self.store().read(FILE), b"cache 1\nSOON E 1767600600\n")
        # Without a clock an entry with an expiry may have lapsed: not used.
        self.cache.update("LATER", info("Accepted", "2026-01-06T08:00:00Z"))
        self.b.now_s = 0
        self.assertEqual(self.cache.status("LATER"), None)
        self.assertFalse("LATER" in self.b.local)

    def test_bounded_least_recently_used_dropped(self):
        for tag in ("A1", "A2", "A3", "A4"):
            self.cache.update(tag, info("Accepted"))
        self.assertTrue("A1" in self.b.local)      # a card admitted counts as used
        self.cache.update("A5", info("Accepted"))  # bound 4: A2, the least recently used, goes
        self.assertEqual(len(self.cache), 4)
        self.assertEqual(self.store().read(FILE), b"cache 1\nA3 A\nA4 A\nA1 A\nA5 A\n")
        self.assertEqual(self.cache.status("A2"), None)
        self.cache.update("A3", info("Blocked"))   # an answer moves it to the newest end
        self.cache.update("A6", info("Accepted"))
        self.assertEqual(self.store().read(FILE), b"cache 1\nA1 A\nA5 A\nA3 B\nA6 A\n")
        self.assertEqual(len(AuthCache(self.store(), self.cfg)), 4)

    def test_local_list_takes_precedence(self):
        self.call("SendLocalList", {"listVersion": 1, "updateType": "Full",
                                    "localAuthorizationList": [
                                        {"idTag": "LISTED", "idTagInfo": {"status": "Blocked"}},
                                        {"idTag": "OK", "idTagInfo": {"status": "Accepted"}}]})
        self.cache.update("LISTED", info("Accepted"))
        self.cache.update("OK", info("Blocked"))
        self.cache.update("CACHED", info("Accepted"))
        self.assertFalse("LISTED" in self.b.local)
        self.assertTrue("OK" in self.b.local)
        self.assertTrue("CACHED" in self.b.local)
        # With the list disabled the cache answers for every card.
        self.cfg.set("ocpp_local_list", False)
        self.assertTrue("LISTED" in self.b.local)
        self.assertFalse("OK" in self.b.local)

    def test_offline_rules_use_the_cache(self):
        auth = Authorizer(self.cfg, self.store())
        auth.allow_list = self.b.local
        self.cache.update("CARD-A", info("Accepted"))
        self.cache.update("CARD-B", info("Invalid"))
        self.assertEqual(auth.request("card-a", False), (True, ACCEPTED_OFFLINE_LIST))
        self.assertEqual(auth.request("CARD-B", False), (False, REJECTED_OFFLINE_NOT_IN_LIST))
        self.assertEqual(auth.request("CARD-Z", False), (False, REJECTED_OFFLINE_NOT_IN_LIST))
        self.assertEqual(self.call("ClearCache"), {"status": "Accepted"})
        self.assertEqual(auth.request("CARD-A", False), (False, REJECTED_OFFLINE_NOT_IN_LIST))

    def test_clear_cache(self):
        self.cache.update("CARD-A", info("Accepted"))
        self.assertEqual(self.call("ClearCache"), {"status": "Accepted"})
        self.assertEqual((len(self.cache), self.cache.status("CARD-A")), (0, None))
        self.assertFalse(self.store().exists(FILE))
        self.assertEqual(len(AuthCache(self.store(), self.cfg)), 0)
        self.assertEqual(self.call("ClearCache"), {"status": "Accepted"})   # already empty

    def test_disabled_neither_used_nor_filled(self):
        self.cache.update("CARD-A", info("Accepted"))
        self.cfg.set("ocpp_auth_cache", False)
        self.assertFalse("CARD-A" in self.b.local)
        self.cache.update("CARD-B", info("Accepted"))
        self.assertEqual(self.call("ClearCache"), {"status": "Rejected"})
        self.cfg.set("ocpp_auth_cache", True)
        self.assertTrue("CARD-A" in self.b.local)          # kept, not cleared
        self.assertEqual(self.cache.status("CARD-B"), None)  # never filled

    def test_damaged_file_counted_and_taken_as_empty(self):
        for bad in (b"cache 1\nCARD-A Q\n", b"cache 1\nCARD-A A soon\n", b"junk",
                    b"cache 1\nCARD-A A"):
            self.store().write_atomic(FILE, bad)
            c = AuthCache(self.store(), self.cfg, lambda: T0)
            self.assertEqual((c.damaged, len(c), c.status("CARD-A")), (1, 0, None), bad)
            self.assertTrue(c.error)
            # The next answer starts a fresh file.
            c.update("CARD-B", info("Accepted"))
            self.assertEqual(self.store().read(FILE), b"cache 1\nCARD-B A\n")
            self.assertEqual((len(c), c.error), (1, None))
        # A file whose frame (CRC) is damaged too.
        self.fs.files["/data/" + FILE] = bytearray(b"garbage")
        c = AuthCache(self.store(), self.cfg)
        self.assertEqual((c.damaged, len(c)), (1, 0))


class AuthCacheKeys(unittest.TestCase):
    def test_authorization_cache_enabled_read_write(self):
        cfg = Config({})
        known, unknown = keys.get(cfg, ["AuthorizationCacheEnabled"])
        self.assertEqual((unknown, known[0]["value"], known[0]["readonly"]),
                         ([], "true", False))
        self.assertEqual(keys.setting_for("AuthorizationCacheEnabled", "false"),
                         ("ocpp_auth_cache", False))
        self.assertEqual(keys.setting_for("AuthorizationCacheEnabled", "off"), "Rejected")


if __name__ == "__main__":
    unittest.main()
