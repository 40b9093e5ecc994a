"""Reaction time while the station writes to flash, in simulated time.

    micropython -m tools.bench_flash [quick]

Prints one JSON line: {"reaction_ms_max": ..., "by_op": [...], "flash": {...}}. Run by
tools/bench.py (reaction_ms_flash_busy) and by tests/unit/test_flash_timing.py.

The flash is tools/flash_timing.py over the in-memory flash of powercut_fs: every
erase and page program advances the SimBoard's clock by what it takes on an ESP32's SPI
NOR flash (about 45 ms per 4 KB sector erase), as the CPU is held meanwhile.

The heavy writing: a station boots with session records of earlier boots waiting in its
session journal (BACKLOG of them) and an outbox that holds four; an EV charges; the
backend then acknowledges the four held records at once. From there each loop iteration
writes the acknowledgements (session journal, outbox index, data files removed), moves two
waiting records into the outbox (data file, rename, index append), writes the session's
checkpoint and the counters when due. The EV opens S2 (C->B) as the k-th flash operation
of that writing begins, for every k in turn; the figure is the worst time from that change
to the contactor coil command "open".
"""
import json
import sys

from firmware.outbox import KIND_SESSION
from firmware.station import TICK_MS, Station
from firmware.storage import Store
from tools.flash_timing import FlashTimingFs
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.model import S2_C, S2_OPEN
from tools.pilotsim.simboard import SimBoard

ROOT = "/data"
BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9, "outbox_capacity": 4}
BACKLOG = 12
CLOSE_LIMIT_MS = 5000
OPEN_LIMIT_MS = 2000


def _run(st, board, ms):
    for _ in range(ms // TICK_MS):
        st.step()
        board.sleep_ms(TICK_MS)


def backlog(n=BACKLOG):
    """A flash with `n` finished session records pending (no backend: none went out)."""
    fs = PowerCutFs()
    board = SimBoard()
    st = Station(board, config={}, store=Store(ROOT, fs))
    _run(st, board, 100)
    m = board.model
    for _ in range(n):
        m.plugged = True
        m.update()
        _run(st, board, 300)
        m.plugged = False
        m.update()
        _run(st, board, 300)
    if len(st.sessions._pending) != n:
        raise RuntimeError("backlog: %d records pending, not %d" % (len(st.sessions._pending), n))
    return fs.restart()


class Trial:
    """One station on the timed flash; `stimulus_at` is the flash operation (counted from
    the acknowledgements) at whose start the EV opens S2; None: never."""

    def __init__(self, medium_fs, stimulus_at=None, unplug=False):
        self.board = board = SimBoard(start_ms=100000)

        def advance(ms):
            board.now_ms += ms
        self.flash = FlashTimingFs(medium_fs.restart(), advance)
        self.station = Station(board, config=dict(BACKEND), store=Store(ROOT, self.flash))
        self.stimulus_at = stimulus_at
        self.unplug = unplug
        self.t_stim = None
        self._base_ops = None

    def _before_op(self, fs):
        if self.t_stim is None and fs.ops - self._base_ops + 1 == self.stimulus_at:
            m = self.board.model
            m.s2 = S2_OPEN
            if self.unplug:
                m.plugged = False
            m.update()
            self.t_stim = self.board.now_ms

    def charge(self):
        b = self.board
        st = self.station
        b.model.plugged = True
        b.model.s2 = S2_C
        b.model.update()
        t = 0
        while not b.contactor_cmd:
            st.step()
            b.sleep_ms(TICK_MS)
            t += TICK_MS
            if t > CLOSE_LIMIT_MS:
                raise RuntimeError("the contactor did not close in C")
        _run(st, b, 200)
        held = [r.id for r in st.outbox.records() if r.kind == KIND_SESSION]
        if len(held) != BACKEND["outbox_capacity"]:
            raise RuntimeError("outbox holds %d session records" % len(held))
        return held

    def ack_and_write(self, held):
        """The backend acknowledges the held records; returns the reaction in ms (None
        when the stimulus never came) and the flash operations the writing made."""
        b = self.board
        st = self.station
        self._base_ops = self.flash.ops
        self.flash.before_op = self._before_op
        for rid in held:
            st.outbox.ack(rid)          # what MqttLink does with <prefix>/<id>/ack
        t = 0
        while b.contactor_cmd and t <= OPEN_LIMIT_MS:
            st.step()
            b.sleep_ms(TICK_MS)
            t += TICK_MS
        if self.t_stim is None:
            # Past the writing: the flash went quiet before operation `stimulus_at`.
            return None, self.flash.ops - self._base_ops
        if b.contactor_cmd:
            raise RuntimeError("C->B at flash operation %d: the contactor did not open"
                               % self.stimulus_at)
        return b._contact_change_ms - self.t_stim, self.flash.ops - self._base_ops


def reaction(max_ops=None, unplug=False):
    medium = backlog()
    probe = Trial(medium)
    probe.ack_and_write(probe.charge())
    writing = probe.flash.ops - probe._base_ops
    last = writing if max_ops is None else min(writing, max_ops)
    times = []
    for k in range(1, last + 1):
        tr = Trial(medium, k, unplug)
        took, _ = tr.ack_and_write(tr.charge())
        if took is not None:
            times.append(took)
    f = probe.flash
    return {"reaction_ms_max": max(times), "reaction_ms_min": min(times), "by_op": times,
            "flash": {"ops": writing, "longest_op_us": f.longest_us, "erases": f.erases,
                      "busy_ms": f.busy_us // 1000}}


def main():
    quick = "quick" in sys.argv[1:]
    print(json.dumps(reaction(40 if quick else None)))


if __name__ == "__main__":
    main()
