# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Damage found on flash and writes that fail are never silent: each is counted in
# diagnostics()["storage_damage"], raises STORAGE_ERROR and sends a storage_damage event.
# The last test boots on a real littlefs image (os.VfsLfs2 over a RAM block device, the
# ESP32's filesystem) that a power cut and bit rot damaged: safe outputs, records kept.
import os
import sys
import unittest

from firmware import faults
from firmware.auth import AllowList
from firmware.station import OUTBOX_FILE, TICK_MS, Station
from firmware.storage import Journal, Store
from tools.powercut_fs import FailingFs, PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

from test_station_storage import ROOT, BACKEND, damaged_outbox_medium

IS_MICROPYTHON = sys.implementation.name == "micropython"


def run(board, st, ms):
    for _ in range(ms // TICK_MS):
        st.step()
        board.sleep_ms(TICK_MS)


def events(st, kind):
    return [e for e in st.link._events if (b'"type": "%s"' % kind.encode()) in e]


class DamageIsReported(unittest.TestCase):
    def test_a_working_flash_reports_no_damage(self):
        board = SimBoard()
        st = Station(board, config=BACKEND, store=Store(ROOT, PowerCutFs()))
        d = st.diagnostics()["storage_damage"]
        self.assertEqual(sum(d.values()), 0, d)
        self.assertFalse(st.faults.is_active(faults.STORAGE_ERROR))
        self.assertEqual(events(st, "storage_damage"), [])

    def test_cut_away_journal_bytes_and_orphans(self):
        medium, dirs = damaged_outbox_medium()
        board = SimBoard()
        st = Station(board, config=BACKEND, store=Store(ROOT, PowerCutFs(medium, dirs)))
        d = st.diagnostics()["storage_damage"]
        self.assertTrue(d["outbox_journal_damaged_bytes"] > 0, d)
        self.assertEqual(d["outbox_orphans_removed"], 1, d)
        self.assertTrue(st.faults.counts[faults.STORAGE_ERROR] >= 1)
        (ev,) = events(st, "storage_damage")
        self.assertTrue(b'"outbox_orphans_removed": 1' in ev, ev)
        # Both records held before the damage are still there.
        self.assertEqual(sorted(r.id for r in st.outbox.records() if r.kind == "fault")[:2],
                         ["fault-1", "fault-2"])

    def test_an_allow_list_that_became_unreadable(self):
        fs = PowerCutFs()
        store = Store(ROOT, fs)
        AllowList(store).replace(1, ["CARD-1", "CARD-2"])
        names = [p for p in fs.medium if "allow" in p or "auth" in p]
        self.assertTrue(names, sorted(fs.medium))
        for p in names:
            fs.medium[p][14] ^= 0x40                     # a flipped bit: CRC fails
        board = SimBoard()
        st = Station(board, config=dict(BACKEND, auth_mode="local"), store=Store(ROOT, fs))
        self.assertEqual(len(st.auth.allow_list), 0)
        self.assertEqual(st.diagnostics()["storage_damage"]["allow_list_unreadable"], 1)
        self.assertTrue(st.faults.counts[faults.STORAGE_ERROR] >= 1)
        self.assertEqual(len(events(st, "storage_damage")), 1)

    def test_failed_checkpoint_and_journal_writes_while_running(self):
        fs = FailingFs(paths=("session.",), err=28, failing=False)
        board = SimBoard()
        st = Station(board, config=BACKEND, store=Store(ROOT, fs))
        run(board, st, 100)
        self.assertEqual(events(st, "storage_damage"), [])
        fs.failing = True                                # session.live/.ckpt refused
        board.model.plugged = True
        board.model.s2 = S2_C
        board.model.update()
        run(board, st, 3000)
        d = st.diagnostics()["storage_damage"]
        self.assertTrue(d["checkpoint_write_failures"] >= 1, d)
        self.assertTrue(st.faults.counts[faults.STORAGE_ERROR] >= 1)
        self.assertTrue(events(st, "storage_damage"))
        fs.paths = ("sessions.jnl",)                     # now the journal refuses too
        board.model.plugged = False
        board.model.s2 = S2_OPEN
        board.model.update()
        run(board, st, 500)
        self.assertTrue(st.diagnostics()["storage_damage"]["journal_write_failures"] >= 1)
        # Reported as it grows, not at every iteration.
        n = len(events(st, "storage_damage"))
        self.assertTrue(n <= 6, n)


class RamBlockDevice:
    # MicroPython's docs (library/os.html, "Simple and extended interface").
    def __init__(self, block_size, num_blocks):
        self.block_size = block_size
        self.data = bytearray(block_size * num_blocks)

    def readblocks(self, block_num, buf, offset=0):
        addr = block_num * self.block_size + offset
        for i in range(len(buf)):
            buf[i] = self.data[addr + i]

    def writeblocks(self, block_num, buf, offset=None):
        if offset is None:
            for i in range(self.block_size):        # erase, then write
                self.data[block_num * self.block_size + i] = 0
            offset = 0
        addr = block_num * self.block_size + offset
        for i in range(len(buf)):
            self.data[addr + i] = buf[i]

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // self.block_size
        if op == 5:
            return self.block_size
        if op == 6:
            return 0


_MOUNT = "/lfs_damage"


@unittest.skipUnless(IS_MICROPYTHON and hasattr(os, "VfsLfs2"), "littlefs: MicroPython only")
class BootOnADamagedLittlefs(unittest.TestCase):
    def mount(self, bdev, mkfs=False):
        if mkfs:
            os.VfsLfs2.mkfs(bdev)
        os.mount(os.VfsLfs2(bdev), _MOUNT)

    def tearDown(self):
        try:
            os.umount(_MOUNT)
        except OSError:
            pass

    def test_records_kept_outputs_safe_boot_bounded(self):
        bdev = RamBlockDevice(4096, 64)      # 256 KB, the ESP32's 4 KB sectors
        self.mount(bdev, mkfs=True)
        root = _MOUNT + "/data"
        board = SimBoard()
        st = Station(board, config={}, store=Store(root))
        run(board, st, 100)
        for _ in range(3):                    # three sessions, no backend: kept pending
            board.model.plugged = True
            board.model.update()
            run(board, st, 300)
            board.model.plugged = False
            board.model.update()
            run(board, st, 300)
        board.model.plugged = True            # a fourth, live when the power fails
        board.model.s2 = S2_C
        board.model.update()
        run(board, st, 3000)
        self.assertTrue(board.contactor_cmd)
        # The power fails during an append: half a frame at the journal's end; a data
        # file gets a flipped bit; the counters file is cut short.
        jpath = root + "/sessions.jnl"
        with open(jpath, "ab") as f:
            f.write(b"\xa5R\x02\x00\x12\x34\x56\x78half-a-rec")
        with open(root + "/counters.json", "rb") as f:
            raw = f.read()
        with open(root + "/counters.json", "wb") as f:
            f.write(raw[: len(raw) // 2])
        os.umount(_MOUNT)
        # Power on: mount the same image, boot on it.
        self.mount(bdev)
        board2 = SimBoard(start_ms=board.now_ms + 5000)
        board2.model.plugged = True
        board2.model.s2 = S2_C
        board2.model.update()
        st2 = Station(board2, config={}, store=Store(root))
        self.assertFalse(board2.contactor_cmd)           # nothing energised by the boot
        st2.step()
        self.assertFalse(board2.contactor_cmd)           # the first tick does not close
        ids = [r["id"] for r in st2.sessions.pending()]
        self.assertEqual(ids[:3], ["1-1", "1-2", "1-3"])
        self.assertEqual(ids[3], "1-4")                  # the cut session, closed at boot
        d = st2.diagnostics()["storage_damage"]
        self.assertTrue(d["journal_damaged_bytes"] > 0, d)
        self.assertTrue(st2.faults.counts[faults.STORAGE_ERROR] >= 1)
        self.assertTrue(st2.counters.boots >= 2)         # boot number never comes back
        # Charging control works on the repaired image.
        run(board2, st2, 3000)
        self.assertTrue(board2.contactor_cmd)


if __name__ == "__main__":
    unittest.main()
