"""The project's fixes to MicroPython v1.28.0 (tools/mp_patches.py): applied once, to the tree
the stand-in and the ESP32 image are built from, and each one changes what the runtime does.

gc_realloc's last used block: a collection after a block grew in place onto the heap's last
block ran __del__ on memory past the end of the heap (a segmentation fault in the heap walk,
tests/system/test_heap_walk.py, on a 60 KB heap). tests/system/gc_tail_probe.py makes that
visible: HIT 1 on the unpatched runtime, HIT 0 on the stand-in.
"""
import os
import subprocess

import pytest

from tools import mp_patches, standin
from tools.devicefiles import MICROPYTHON, ROOT

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "gc_tail_probe.py")
GC = mp_patches.GC_REALLOC_LAST_USED
# Heap sizes (KB) whose allocation table has an even length and a spare byte after the
# finaliser table: the byte the unpatched collection reads lies inside the heap's tables.
PROBE_HEAPS_KB = [41, 47, 52]


def _tree(tmp_path, text):
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "gc.c").write_text("/* head */\n" + text + "/* tail */\n")
    return str(tmp_path)


def test_a_pending_patch_is_applied_once(tmp_path):
    src = _tree(tmp_path, GC[1])
    assert mp_patches.state(src, GC) == "pending"
    assert mp_patches.apply(src) == 1
    text = (tmp_path / "py" / "gc.c").read_text()
    assert text == "/* head */\n" + GC[2] + "/* tail */\n"
    assert "MAX(area->gc_last_used_block, end_block - 1);" in text
    assert mp_patches.state(src, GC) == "applied"
    assert mp_patches.apply(src) == 0                       # again: nothing to do
    assert (tmp_path / "py" / "gc.c").read_text() == text


def test_a_tree_without_the_text_stops_the_build_and_stays_as_it_was(tmp_path):
    src = _tree(tmp_path, "        area->gc_last_used_block = 7;\n")
    before = (tmp_path / "py" / "gc.c").read_text()
    with pytest.raises(mp_patches.PatchError) as e:
        mp_patches.apply(src)
    assert os.path.join(src, "py", "gc.c") in str(e.value)
    assert (tmp_path / "py" / "gc.c").read_text() == before
    assert mp_patches.state(str(tmp_path / "nowhere"), GC) == "unknown"


def test_the_stand_ins_source_has_every_patch():
    src = standin.source_dir()
    assert [mp_patches.state(src, p) for p in mp_patches.PATCHES] == ["applied"]


def _probe(binary, kb):
    r = subprocess.run([binary, "-X", "heapsize=%dK" % kb, PROBE, str(kb * 1024)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("HIT "), (kb, r.returncode,
                                                               r.stdout + r.stderr)
    return int(r.stdout.split()[1])


@pytest.mark.parametrize("kb", PROBE_HEAPS_KB)
def test_a_collection_runs_no_finaliser_past_the_end_of_the_heap(kb):
    assert _probe(MICROPYTHON, kb) == 0


def test_the_probe_sees_the_unpatched_collection_look_past_the_heap():
    # The same probe on MicroPython v1.28.0 as released: the finaliser past the heap runs.
    binary = mp_patches.unpatched_standin(standin.source_dir(),
                                          os.path.join(ROOT, "build", "standin-unpatched"), GC)
    assert [_probe(binary, kb) for kb in PROBE_HEAPS_KB] == [1] * len(PROBE_HEAPS_KB)
