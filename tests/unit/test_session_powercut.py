# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Power cut at every flash operation of a station's day, torn and clean, then a restart on the
# files as they were left: the configuration, every committed session record and the
# counters must be intact, nothing duplicated, a torn tail dropped.
import unittest

from firmware.config import Config
from firmware.counters import Counters
from firmware.session import SessionManager
from firmware.states import STATE_A, STATE_B2, STATE_C2
from firmware.storage import Store
from tools.powercut_fs import PowerCut, PowerCutFs

ROOT = "/data"
CFG_V1 = {"station_id": "cp-0042", "price_per_kwh_minor": 30}
CFG_V2 = {"station_id": "cp-0042", "price_per_kwh_minor": 35, "auth_mode": "local"}


class Log:
    """What the station had been told was done, as the workload goes."""

    def __init__(self):
        self.t = 1000
        self.energy_wms = 0
        self.power_w = 0
        self.config = None           # config version committed (write_atomic returned)
        self.config_inflight = None
        self.finished = {}           # id -> record handed out (on flash before that)
        self.acked = []              # acknowledged() returned True
        self.ack_inflight = None
        self.finishing = False       # the cut fell inside a session's end

    @property
    def register(self):
        return 100000 + self.energy_wms // 3600000


def _boot(fs, log):
    store = Store(ROOT, fs)
    counters = Counters(store)
    boot = counters.boot(log.t)
    raw = store.read("config.json")
    cfg = Config.from_json(raw.decode()) if raw is not None else Config(CFG_V1)
    return store, counters, SessionManager(cfg, store, counters, boot)


def _run(sm, log, ms, step=5000):
    end = log.t + ms
    while log.t < end:
        log.t += step
        log.energy_wms += log.power_w * step
        sm.on_meter(log.t, log.register, log.power_w, True)
        sm.tick(log.t)


def _session(sm, log, minutes, tag):
    sm.on_state(log.t, STATE_B2)
    sm.set_id_tag(tag, log.t, "local_list")
    sm.on_state(log.t, STATE_C2)
    sm.on_contactor(log.t, True)
    log.power_w = 7200
    _run(sm, log, minutes * 60000)
    sm.on_state(log.t, STATE_B2)
    sm.on_contactor(log.t, False)
    log.power_w = 0
    _run(sm, log, 30000)
    log.finishing = True
    sm.on_state(log.t, STATE_A)
    log.finishing = False
    for r in sm.pop_completed():
        log.finished[r["id"]] = r


def _ack(sm, log, sid):
    log.ack_inflight = sid
    if sm.acknowledged(sid):
        log.acked.append(sid)
    log.ack_inflight = None


def _write_config(store, log, values):
    log.config_inflight = values
    store.write_atomic("config.json", Config(values).to_json().encode())
    log.config = values
    log.config_inflight = None


def workload(fs, log):
    store, _counters, sm = _boot(fs, log)
    sm.on_meter(log.t, log.register, 0, True)
    _write_config(store, log, CFG_V1)
    _session(sm, log, 3, "CARD-A")
    _ack(sm, log, "1-1")
    _session(sm, log, 2, "CARD-B")
    _write_config(store, log, CFG_V2)
    _session(sm, log, 2, "CARD-C")
    _ack(sm, log, "1-3")
    _ack(sm, log, "1-2")
    _session(sm, log, 2, "CARD-D")


class PowerCutEverywhere(unittest.TestCase):
    def check_restart(self, fs, log, k):
        where = "cut at op %d (%s)" % (k, fs.log[-1] if fs.log else "-")
        fs2 = fs.restart()
        store, counters, sm = _boot(fs2, log)
        # configuration: the committed version, or the one being written, never broken
        raw = store.read("config.json")
        got = Config.from_json(raw.decode()).changed_from_defaults() if raw is not None else None
        allowed = [log.config]
        if log.config_inflight is not None:
            allowed.append(log.config_inflight)
        self.assertIn(got, [Config(v).changed_from_defaults() if v else None for v in allowed], where)

        recovered = sm.recover(log.t + 1000, log.register)
        pending = sm.pending()
        ids = [r["id"] for r in pending]
        self.assertEqual(len(ids), len(set(ids)), where + ": duplicated record")
        for sid, rec in log.finished.items():
            if sid in log.acked:
                self.assertFalse(sid in ids, where + ": acknowledged %s came back" % sid)
            elif sid != log.ack_inflight:
                self.assertIn(sid, ids, where + ": lost %s" % sid)
                self.assertEqual(pending[ids.index(sid)], rec, where)
        for r in pending:
            if r["id"] not in log.finished:
                # only the session live at the cut (or whose end the cut interrupted)
                self.assertTrue(r["stop_reason"] in ("power_loss", "ev_unplugged"), where)
                if r["stop_reason"] == "ev_unplugged":
                    self.assertTrue(log.finishing, where)
        extra = [r for r in pending if r["id"] not in log.finished]
        self.assertTrue(len(extra) <= 1, where)
        if recovered is not None:
            self.assertEqual(extra, [recovered], where)
        # counters: each finished session counted once, with its energy
        known = {}
        for sid in log.acked:
            known[sid] = log.finished[sid]
        if log.ack_inflight is not None and log.ack_inflight not in ids:
            known[log.ack_inflight] = log.finished[log.ack_inflight]
        for r in pending:
            known[r["id"]] = r
        self.assertEqual(counters.sessions, len(known), where + ": session count")
        self.assertEqual(counters.energy_wh, sum(r["energy_wh"] or 0 for r in known.values()),
                         where + ": energy count")
        # life goes on: a new session gets a fresh id and everything can be acknowledged
        sm.on_meter(log.t + 2000, log.register, 0, True)
        sm.on_state(log.t + 2000, STATE_B2)
        sm.on_state(log.t + 62000, STATE_A)
        new = sm.pop_completed()
        self.assertTrue(new, where)
        self.assertEqual(new[-1]["id"].split("-")[0], str(sm.boot_id))
        self.assertFalse(new[-1]["id"] in known, where)
        for r in sm.pending():
            self.assertTrue(sm.acknowledged(r["id"]), where)
        _s, _c, sm2 = _boot(fs2.restart(), log)
        self.assertEqual(sm2.pending(), [], where)

    def test_cut_at_every_operation(self):
        probe = PowerCutFs()
        workload(probe, Log())
        total = probe.ops
        self.assertTrue(total > 60)
        runs = 0
        for k in range(1, total + 2):
            for tear in (False, True):
                fs = PowerCutFs(cut_at=k, tear=tear)
                log = Log()
                try:
                    workload(fs, log)
                except PowerCut:
                    pass
                self.check_restart(fs, log, k)
                runs += 1
        self.assertEqual(runs, 2 * (total + 1))
