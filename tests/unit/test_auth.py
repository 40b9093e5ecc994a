# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import unittest

from firmware.auth import (LIST_FILE, SOURCE_BACKEND, SOURCE_READER, AllowListError, Authorizer,
                           IdTagError, IdTagReader)
from firmware.config import Config
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs

ROOT = "/data"


class ScriptedReader(IdTagReader):
    """An RFID reader double: cards presented at given poll counts."""

    def __init__(self, cards):
        self.cards = dict(cards)
        self.polls = 0

    def poll(self):
        self.polls += 1
        return self.cards.pop(self.polls, None)


def _auth(fs=None, **cfg):
    fs = fs or PowerCutFs()
    return Authorizer(Config(cfg), Store(ROOT, fs)), fs


class Matrix(unittest.TestCase):
    # every (mode, policy, source, online, tag known) combination against the documented table
    def expected(self, mode, policy, source, online, known):
        if mode == "free":
            return True, "free"
        if source == SOURCE_BACKEND:
            return True, "backend"
        if mode == "local":
            return (True, "local_list") if known else (False, "not_in_list")
        if online:
            return False, "ask_backend"
        if policy == "allow_all":
            return True, "offline_allow_all"
        if policy == "deny":
            return False, "offline_deny"
        return (True, "offline_local_list") if known else (False, "offline_not_in_list")

    def test_whole_matrix(self):
        n = 0
        for mode in ("free", "backend", "local"):
            for policy in ("local_list", "allow_all", "deny"):
                a, _fs = _auth(auth_mode=mode, offline_policy=policy)
                a.allow_list.replace(1, ["04A1B2C3"])
                for source in (SOURCE_READER, SOURCE_BACKEND):
                    for online in (True, False):
                        for tag, known in (("04a1b2c3", True), ("DEADBEEF", False)):
                            self.assertEqual(a.request(tag, online, source),
                                             self.expected(mode, policy, source, online, known))
                            n += 1
                self.assertEqual(a.autostart(), mode == "free")
        self.assertEqual(n, 72)

    def test_spot_checks_read_like_the_table(self):
        a, _fs = _auth(auth_mode="backend", offline_policy="local_list")
        a.allow_list.replace(3, ["CARD-1"])
        self.assertEqual(a.request("CARD-1", True), (False, "ask_backend"))
        self.assertEqual(a.request("CARD-1", False), (True, "offline_local_list"))
        self.assertEqual(a.request("CARD-2", False), (False, "offline_not_in_list"))
        self.assertEqual(a.request("CARD-2", True, SOURCE_BACKEND), (True, "backend"))

    def test_mode_changes_apply_at_once(self):
        cfg = Config({"auth_mode": "local"})
        a = Authorizer(cfg, Store(ROOT, PowerCutFs()))
        self.assertEqual(a.request("X1", True), (False, "not_in_list"))
        cfg.set("auth_mode", "free")
        self.assertEqual(a.request("X1", True), (True, "free"))

    def test_malformed_tags_are_refused(self):
        a, _fs = _auth()
        for bad in ("", "has space", "x" * 37, None, 1234, "caf\u00e9"):
            self.assertRaises(IdTagError, a.request, bad, True)
        self.assertRaises(ValueError, a.request, "OK", True, "nfc")
        self.assertEqual(a.request("x" * 36, True), (True, "free"))


class AllowListEdits(unittest.TestCase):
    def test_persisted_and_reloaded(self):
        a, fs = _auth(auth_mode="local")
        a.allow_list.replace(5, ["a1", "B2"])
        a.allow_list.update(6, add=["c3"], remove=["A1"])
        again = Authorizer(Config({"auth_mode": "local"}), Store(ROOT, fs.restart()))
        self.assertEqual(again.allow_list.version, 6)
        self.assertEqual(again.allow_list.tags(), ["B2", "C3"])
        self.assertEqual(again.request("c3", False), (True, "local_list"))
        self.assertEqual(again.request("a1", False), (False, "not_in_list"))

    def test_stale_or_bad_edits_change_nothing(self):
        a, fs = _auth()
        a.allow_list.replace(2, ["A"])
        before = dict(fs.medium)
        al = a.allow_list
        self.assertRaises(AllowListError, al.replace, 2, ["B"])       # not newer
        self.assertRaises(AllowListError, al.replace, 1, ["B"])
        self.assertRaises(AllowListError, al.replace, True, ["B"])
        self.assertRaises(AllowListError, al.replace, 3, "B")         # not a list
        self.assertRaises(AllowListError, al.replace, 3, ["ok", "not ok"])
        self.assertRaises(AllowListError, al.update, 3, ["B"], ["b"])
        self.assertEqual((al.version, al.tags()), (2, ["A"]))
        self.assertEqual(fs.medium, before)

    def test_size_is_bounded_by_config(self):
        a, _fs = _auth(auth_list_max=3)
        a.allow_list.replace(1, ["A", "B", "C"])
        self.assertRaises(AllowListError, a.allow_list.update, 2, ["D"])
        self.assertEqual(len(a.allow_list), 3)
        a.allow_list.update(2, ["D"], ["A"])
        self.assertEqual(a.allow_list.tags(), ["B", "C", "D"])

    def test_failed_write_keeps_the_old_list(self):
        a, fs = _auth()
        a.allow_list.replace(1, ["A"])

        class Broken(PowerCutFs):
            def open(self, path, mode):
                if "w" in mode:
                    raise OSError(28, "ENOSPC")
                return PowerCutFs.open(self, path, mode)

        b = Authorizer(Config(), Store(ROOT, Broken(dict(fs.medium), set(fs.dirs))))
        self.assertRaises(OSError, b.allow_list.replace, 2, ["Z"])
        self.assertEqual((b.allow_list.version, b.allow_list.tags()), (1, ["A"]))

    def test_unreadable_list_is_empty_and_offline_denies(self):
        for content in (b"{not json", b'{"version": "7", "tags": ["A"]}',
                        b'{"version": 7, "tags": ["A B"]}', b'{"tags": ["A"]}', b"[]"):
            fs = PowerCutFs()
            Store(ROOT, fs).write_atomic(LIST_FILE, content)
            a, _fs = _auth(fs, auth_mode="backend", offline_policy="local_list")
            self.assertEqual((len(a.allow_list), a.allow_list.version), (0, 0))
            self.assertTrue(a.allow_list.error)
            self.assertEqual(a.request("A", False), (False, "offline_not_in_list"))
            a.allow_list.replace(1, ["A"])            # the backend can send a new one
            self.assertEqual(a.request("A", False), (True, "offline_local_list"))


class ReaderFlow(unittest.TestCase):
    def test_card_at_an_offline_station_in_backend_mode(self):
        a, _fs = _auth(auth_mode="backend", offline_policy="local_list")
        a.allow_list.replace(1, ["04AABB"])
        reader = ScriptedReader({3: "04aabb", 5: "0499"})
        results = []
        for _ in range(6):
            tag = reader.poll()
            if tag is not None:
                results.append((tag,) + a.request(tag, False))
        self.assertEqual(results, [("04aabb", True, "offline_local_list"),
                                   ("0499", False, "offline_not_in_list")])
        self.assertIsNone(IdTagReader().poll())
