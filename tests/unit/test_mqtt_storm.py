# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Storm control in the MQTT link, in simulated time (docs/mqtt.md, "Reconnect storms"):
# the first connect after boot is drawn from 0..mqtt_boot_spread_s, and outbox records
# leave at most outbox_flush_per_s a second. The broker is tools/bench_net.py's fake
# (answers CONNECT, SUBSCRIBE and PINGREQ); a call that would block fails the test.
import unittest

from firmware.compat import ticks_add, ticks_diff
from firmware.config import Config
from firmware.mqtt_link import MqttLink, _id_hash, _seed
from firmware.outbox import Outbox
from firmware.storage import Journal, Store
from mqtt_doubles import RecordingTarget
from tools.powercut_fs import PowerCutFs
from tools.bench_net import FakeNet

STEP = 10
START = ticks_add(0, -3000)      # the clock wraps 3 s into every run


class _Clock:
    def __init__(self):
        self.now = START

    def ticks_ms(self):
        return self.now


class _NoStall:
    """bench_net's FakeNet charges blocking calls here: the link must make none."""

    def __init__(self, clock):
        self.board = clock

    def block(self, ms):
        raise AssertionError("the link waited %d ms on the network" % ms)


class Rig:
    def __init__(self, station="cp-storm", rand=None, **cfg):
        values = {"mqtt_host": "10.0.0.9", "mqtt_keepalive_s": 60, "outbox_window": 32,
                  "outbox_capacity": 64}
        values.update(cfg)
        self.cfg = Config(values)
        self.clock = _Clock()
        self.net = FakeNet(_NoStall(self.clock), "up")
        self.outbox = Outbox(Journal(Store("/data", PowerCutFs()), "outbox"),
                             capacity=self.cfg["outbox_capacity"],
                             window=self.cfg["outbox_window"],
                             resend_ms=self.cfg["outbox_resend_s"] * 1000)
        self.link = MqttLink(self.cfg, station, self.outbox, RecordingTarget(self.cfg),
                             socket_factory=self.net, rand=rand, spawn=None)
        self.sent = []           # simulated ms (since START) of every record published
        publish = self.link._client.publish
        record = self.link.topics.record

        def watch(topic, msg, retain=False, qos=0):
            if topic == record:
                self.sent.append(ticks_diff(self.clock.now, START))
            publish(topic, msg, retain, qos)

        publish_parts = self.link._client.publish_parts

        def watch_parts(topic, parts):
            if topic == record:
                self.sent.append(ticks_diff(self.clock.now, START))
            publish_parts(topic, parts)

        self.link._client.publish = watch
        self.link._client.publish_parts = watch_parts
        self.first_socket_ms = None

    def run(self, ms):
        for _ in range(ms // STEP):
            self.link.step(self.clock.now)
            if self.first_socket_ms is None and self.net.sockets:
                self.first_socket_ms = ticks_diff(self.clock.now, START)
            self.clock.now = ticks_add(self.clock.now, STEP)

    def until_online(self, ms):
        for _ in range(ms // STEP):
            if self.link.online and self.link.subscribed:
                return True
            self.run(STEP)
        return False


class FirstConnectAfterBoot(unittest.TestCase):
    def test_no_attempt_before_the_drawn_delay(self):
        r = Rig(rand=lambda n: n - 1, mqtt_boot_spread_s=8)     # the top of the window
        self.assertEqual(r.link.boot_delay_ms, 8000)
        r.run(7990)
        self.assertEqual(r.net.sockets, 0)
        self.assertEqual(r.link.attempts, 0)
        r.run(50)
        self.assertEqual(r.first_socket_ms, 8000)
        self.assertTrue(r.until_online(1000))
        self.assertEqual(r.link.stats()["boot_delay_ms"], 8000)

    def test_spread_zero_connects_at_the_first_step(self):
        r = Rig(rand=lambda n: n - 1, mqtt_boot_spread_s=0)
        r.run(STEP)
        self.assertEqual(r.first_socket_ms, 0)

    def test_the_window_is_the_configured_one(self):
        asked = []

        def rand(n):
            asked.append(n)
            return 0
        Rig(rand=rand, mqtt_boot_spread_s=30)
        self.assertEqual(asked, [30001])

    def test_a_fleet_booting_together_spreads_over_the_window(self):
        # The default RNG (hardware-seeded, mixed with the station id and os.urandom).
        delays = [Rig(station="cp-%04d" % i).link.boot_delay_ms for i in range(40)]
        self.assertTrue(all(0 <= d <= 8000 for d in delays))
        self.assertTrue(len(set(delays)) >= 30)
        # Not bunched at one end: both halves of the window are used.
        self.assertTrue(min(delays) < 4000 < max(delays))

    def test_the_seed_depends_on_the_station_id(self):
        # Boards whose early entropy agrees still differ by their id: neighbouring ids
        # hash to different 24-bit values.
        hashes = [_id_hash("cp-%04d" % i) for i in range(200)]
        self.assertEqual(len(set(hashes)), 200)
        self.assertTrue(all(0 <= h < 1 << 24 for h in hashes))
        self.assertTrue(0 <= _seed("cp-0001") < 1 << 24)


class BacklogFlushRate(unittest.TestCase):
    def _flush(self, per_s, records=20):
        r = Rig(rand=lambda n: 0, mqtt_boot_spread_s=0, outbox_flush_per_s=per_s)
        for i in range(records):
            r.outbox.put("session", {"id": "s-%d" % i, "energy_wh": i})
        self.assertTrue(r.until_online(1000))
        t0 = ticks_diff(r.clock.now, START)
        r.run(10000)
        return r, t0

    def test_records_leave_at_most_the_configured_rate(self):
        r, t0 = self._flush(5)
        self.assertEqual(len(r.sent), 20)
        gaps = [b - a for a, b in zip(r.sent, r.sent[1:])]
        self.assertEqual(min(gaps), 200)
        self.assertEqual(max(gaps), 200)
        # In any one second of the flush: 5 records.
        for k in range(len(r.sent) - 5):
            self.assertTrue(r.sent[k + 5] - r.sent[k] >= 1000)
        self.assertEqual(r.sent[-1] - r.sent[0], 19 * 200)
        self.assertEqual(r.link.records_sent, 20)

    def test_a_higher_rate_flushes_sooner(self):
        r, t0 = self._flush(50)
        self.assertEqual(len(r.sent), 20)
        self.assertEqual(r.sent[-1] - r.sent[0], 19 * 20)

    def test_the_rate_changes_without_a_reboot(self):
        r, t0 = self._flush(1, records=6)
        self.assertEqual(len(r.sent), 6)
        self.assertEqual(r.sent[1] - r.sent[0], 1000)
        for i in range(6, 12):
            r.outbox.put("session", {"id": "s-%d" % i, "energy_wh": i})
        r.cfg.update({"outbox_flush_per_s": 10})
        r.run(2000)
        self.assertEqual(len(r.sent), 12)
        self.assertEqual(r.sent[-1] - r.sent[-2], 100)


if __name__ == "__main__":
    unittest.main()
