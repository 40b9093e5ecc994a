# firmware/config_store.py: an unusable config.json never offers more current than the site
# allows. The last valid copy applies, else the safety limits at their minimum; never the
# defaults (32 A). Runs on CPython and the unix port, on the in-memory flash of powercut_fs.
import json
import unittest

from firmware import config_store, faults
from firmware.config import SAFE_FALLBACK, Config, default
from firmware.station import TICK_MS, Station
from firmware.storage import StorageError, Store
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C
from tools.pilotsim.simboard import SimBoard

ROOT = "/data"
SITE = {"max_current_ma": 16000, "phases": 1, "mqtt_host": "backend.example"}

# Every way config.json can be unusable, as the bytes inside a good Store frame ("framed")
# or as the raw bytes on the medium ("raw": a file copied by hand, a torn write).
BAD_FILES = (
    ("framed", b"[]"),
    ("framed", b"null"),
    ("framed", b"16000"),
    ("framed", b'"max_current_ma"'),
    ("framed", b'{"max_current_ma": 16000'),                 # torn JSON
    ("framed", b'{"max_current_ma": 5}'),                    # out of range
    ("framed", b'{"max_current_ma": 100000}'),
    ("framed", b'{"max_current_ma": true}'),
    ("framed", b'{"phases": 7}'),
    ("framed", b'{"no_such_key": 1}'),
    ("framed", b'{"temp_restore_dc": 900}'),                 # breaks a cross-key rule
    ("framed", b'{"station_id": "cp-\xff"}'),                # not UTF-8
    ("framed", b""),
    ("raw", b'{"max_current_ma": 16000}'),                   # no frame: copied by hand
    ("raw", b"CPF1\x00\x00\x00\x10\x00\x00\x00\x00{\"max_cur"),  # torn frame
)


def store_with(fs=None):
    return Store(ROOT, fs if fs is not None else PowerCutFs())


def put_bad(store, how, data):
    if how == "framed":
        store.write_atomic(config_store.FILE, data)
    else:
        store.fs.medium[ROOT + "/" + config_store.FILE] = bytearray(data)


class FallbackValues(unittest.TestCase):
    def test_every_fallback_is_at_most_its_default_and_valid(self):
        cfg = config_store.safe_defaults()
        for key in SAFE_FALLBACK:
            dflt = default(key)
            self.assertTrue(SAFE_FALLBACK[key] <= dflt, key)
            self.assertEqual(cfg[key], SAFE_FALLBACK[key])
        self.assertEqual(cfg["max_current_ma"], 6000)
        self.assertEqual(cfg["phases"], 1)

    def test_config_from_json_refuses_what_is_not_an_object(self):
        from firmware.config import ConfigError
        for text in ("[]", "null", "3", '"x"'):
            self.assertRaises(ConfigError, Config.from_json, text)
        self.assertRaises(ConfigError, Config, [])


class LoadAndSave(unittest.TestCase):
    def test_a_station_never_configured_runs_on_the_defaults_without_error(self):
        cfg, err = config_store.load(store_with())
        self.assertIsNone(err)
        self.assertEqual(cfg["max_current_ma"], default("max_current_ma"))

    def test_save_writes_the_file_and_its_copy(self):
        st = store_with()
        config_store.save(st, Config(SITE))
        self.assertEqual(json.loads(st.read(config_store.FILE)), SITE)
        self.assertEqual(st.read(config_store.COPY), st.read(config_store.FILE))
        cfg, err = config_store.load(st)
        self.assertIsNone(err)
        self.assertEqual(cfg["max_current_ma"], 16000)

    def test_an_unusable_file_runs_on_the_last_valid_copy(self):
        for how, data in BAD_FILES:
            st = store_with()
            config_store.save(st, Config(SITE))
            put_bad(st, how, data)
            cfg, err = config_store.load(st)
            self.assertEqual(cfg.changed_from_defaults(), SITE, (how, data))
            self.assertIn("last valid copy", err)

    def test_an_unusable_file_without_a_copy_falls_back_to_the_minimum(self):
        for how, data in BAD_FILES:
            st = store_with()
            put_bad(st, how, data)
            cfg, err = config_store.load(st)
            self.assertEqual(cfg["max_current_ma"], 6000, (how, data))
            self.assertEqual(cfg["phases"], 1)
            self.assertIn("no valid copy", err)
            self.assertIn("max_current_ma 6000", err)
            # The damaged file stays for a technician to read.
            self.assertTrue(st.exists(config_store.FILE))

    def test_a_damaged_copy_too_falls_back_to_the_minimum(self):
        st = store_with()
        put_bad(st, "framed", b"[]")
        st.fs.medium[ROOT + "/" + config_store.COPY] = bytearray(b"garbage")
        cfg, err = config_store.load(st)
        self.assertEqual(cfg["max_current_ma"], 6000)
        self.assertIn("config.json: expected a JSON object", err)
        self.assertIn("config.last: damaged", err)

    def test_a_missing_file_beside_a_copy_runs_on_the_copy(self):
        # The first save cut by a reset between the copy and the file (or a lost file).
        st = store_with()
        config_store.save(st, Config(SITE))
        st.remove(config_store.FILE)
        cfg, err = config_store.load(st)
        self.assertEqual(cfg["max_current_ma"], 16000)
        self.assertIn("config.json: missing", err)

    def test_a_valid_file_brings_a_stale_copy_up_to_date(self):
        # config.json written by an older firmware (no copy), or a save cut off after the
        # copy: the copy follows the file that loaded.
        st = store_with()
        st.write_atomic(config_store.FILE, Config(SITE).to_json().encode())
        st.write_atomic(config_store.COPY, b'{"max_current_ma": 32000}')
        cfg, err = config_store.load(st)
        self.assertIsNone(err)
        self.assertEqual(json.loads(st.read(config_store.COPY)), SITE)
        writes = st.fs.ops
        config_store.load(st)
        self.assertEqual(st.fs.ops, writes)           # equal copies: no flash write

    def test_a_failed_copy_write_stores_nothing(self):
        st = store_with()
        config_store.save(st, Config(SITE))

        class CopyFails(Store):
            def write_atomic(self, name, data):
                if name == config_store.COPY:
                    raise StorageError("%s: flash full" % name)
                Store.write_atomic(self, name, data)
        failing = CopyFails(ROOT, st.fs)
        self.assertRaises(StorageError, config_store.save, failing,
                          Config({"max_current_ma": 32000}))
        self.assertEqual(json.loads(st.read(config_store.FILE)), SITE)

    def test_an_unreadable_flash_is_an_error_not_the_defaults(self):
        class Unreadable(Store):
            def read(self, name):
                raise StorageError("%s: read failed (errno 5)" % name)

            def exists(self, name):
                raise StorageError("%s: stat failed" % name)
        cfg, err = config_store.load(Unreadable(ROOT, PowerCutFs()))
        self.assertEqual(cfg["max_current_ma"], 6000)
        self.assertIn("read failed", err)


class StationOnABadConfig(unittest.TestCase):
    """The whole station: a 16 A site whose config.json got damaged offers at most 16 A to
    an EV with a 32 A cable, and reports it."""

    def offered_after_plug_in(self, fs):
        board = SimBoard()
        st = Station(board, store=store_with(fs))
        board.model.plugged = True
        board.model.s2 = S2_C
        board.model.update()
        for _ in range(300):
            st.step()
            board.sleep_ms(TICK_MS)
        self.assertTrue(board.contacts_closed)
        return st, st.charger.offered_ma

    def test_a_damaged_config_keeps_the_site_limit(self):
        for how, data in BAD_FILES:
            fs = PowerCutFs()
            st = Station(SimBoard(), store=store_with(fs))
            self.assertIsNone(st.cmd_set_config({"max_current_ma": 16000, "phases": 1}))
            put_bad(st.store, how, data)
            fs = fs.restart()
            st, offered = self.offered_after_plug_in(fs)
            self.assertEqual(offered, 16000, (how, data))
            self.assertIn("last valid copy", st.config_error)
            self.assertEqual(st.faults.counts[faults.STORAGE_ERROR], 1)

    def test_a_damaged_config_without_a_copy_offers_the_minimum(self):
        fs = PowerCutFs()
        put_bad(store_with(fs), "framed", b"[]")
        st, offered = self.offered_after_plug_in(fs.restart())
        self.assertEqual(offered, 6000)
        self.assertEqual(st.diagnostics()["config_error"], st.config_error)
