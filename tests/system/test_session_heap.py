# The charging session the heap figures are about (tools/bench_session.py: Modbus meter on
# the pymodbus peer, MQTT with telemetry through mosquitto, a backend set_limit, the session
# record acknowledged, `import diag` and diag.status()) on the ESP32 stand-in, the firmware
# given a fixed heap: the regression guard of docs/performance.md, "Heap".
#
# `kb` is the firmware's heap: the process gets the pool of `-X heapsize=<kb>K` for the
# firmware plus the harness (SimBoard, pilot model, TCP UART, the bench's channel), measured
# in the run and held apart (tools/bench_rig.py HarnessRoom, tools/bench.py _session_run).
#
# GUARD_KB is the smallest heap the session completes with in every run when this test was
# last set (standin_heap_min_bytes: 56 KB at 1 KB resolution, the ESP32's first heap area;
# 55 KB completes in some runs) plus 2 KB for what fragmentation moves between runs and
# machines (the storage path, longer on CI, is in the heap and moves the holes). A change
# that makes the session need more heap fails here; `make bench` (standin_heap_min_bytes)
# and docs/performance.md, Heap, track the figure itself.
import shutil

import pytest

from tools import bench

import mosquitto

GUARD_KB = 58


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (tools/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("session-heap")
    bench._tree[0] = str(tmp / "mpy")          # bench.device_fs(): an empty working dir
    p = bench.Peers()
    yield p, str(tmp)
    p.close()
    shutil.rmtree(str(tmp), ignore_errors=True)


def _session(peers, kb):
    p, tmp = peers
    rc, result, stderr = bench._session_run(p, tmp, kb, False, True, "guard%d" % kb)
    return rc, result, stderr


def _completes(rc, result, stderr):
    assert rc == 0 and result is not None, stderr[-2500:]
    # Completed without a MemoryError caught on the way: no INTERNAL_ERROR, no link error.
    assert result["faults"] == [], result["faults"]
    assert result["mqtt"]["internal_errors"] == 0, result["mqtt"]
    assert result["sessions"] == 1 and result["energy_wh"] > 0, result


def test_session_completes_within_the_guard_heap(peers):
    _completes(*_session(peers, GUARD_KB))
