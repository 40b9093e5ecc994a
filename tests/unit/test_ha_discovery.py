# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# Home Assistant discovery (firmware/ha_discovery.py): one config per step, the option
# switching it on and off, and payloads the station's own command parser accepts.
# The fields Home Assistant requires are checked against mosquitto by
# tests/system/test_station_tool.py.
import json
import unittest

from firmware import commands
from firmware.config import Config
from firmware.ha_discovery import ENTITIES, PREFIX, Discovery, node_id
from firmware.messages import Topics

try:
    import micropython
    HEAP_LOCK = hasattr(micropython, "heap_lock")
except ImportError:
    HEAP_LOCK = False


class Client:
    """The umqtt client as Discovery uses it: publish(topic, msg, retain, qos)."""

    def __init__(self):
        self.sent = []

    def publish(self, topic, msg, retain=False, qos=0):
        self.sent.append((topic, msg, retain, qos))


def make(on=True, station_id="cp-0001", **cfg):
    c = Config(dict(cfg, ha_discovery=on))
    return c, Discovery(c, Topics(c["mqtt_prefix"], station_id), station_id)


def run(d, client, steps, connects=1):
    for _ in range(steps):
        d.step(client, connects)


class OneConfigPerStep(unittest.TestCase):
    def test_each_step_publishes_one_retained_config_then_nothing(self):
        cfg, d = make()
        client = Client()
        for k in range(len(ENTITIES)):
            d.step(client, 1)
            self.assertEqual(len(client.sent), k + 1)
        self.assertFalse(d.busy)
        run(d, client, 50)
        self.assertEqual(len(client.sent), len(ENTITIES))
        topics = [t for t, _m, _r, _q in client.sent]
        self.assertEqual(len(set(topics)), len(ENTITIES))
        for (topic, msg, retain, qos), e in zip(client.sent, ENTITIES):
            self.assertEqual(topic, ("%s/%s/cp-0001/%s/config" % (PREFIX, e[0], e[1])).encode())
            self.assertTrue(retain)
            self.assertEqual(qos, 0)
            self.assertTrue(json.loads(msg)["unique_id"].startswith("cp-0001_"))

    def test_off_by_default_publishes_nothing(self):
        self.assertFalse(Config()["ha_discovery"])
        cfg, d = make(on=False)
        client = Client()
        run(d, client, 30)
        self.assertEqual(client.sent, [])

    def test_a_reconnect_publishes_every_config_again(self):
        cfg, d = make()
        client = Client()
        run(d, client, len(ENTITIES) + 5, connects=1)
        run(d, client, len(ENTITIES) + 5, connects=2)
        self.assertEqual(len(client.sent), 2 * len(ENTITIES))
        self.assertEqual(client.sent[:len(ENTITIES)], client.sent[len(ENTITIES):])

    def test_turning_it_off_deletes_every_config_once(self):
        cfg, d = make()
        client = Client()
        run(d, client, len(ENTITIES))
        cfg.update({"ha_discovery": False})
        run(d, client, len(ENTITIES) + 10)
        deleted = client.sent[len(ENTITIES):]
        self.assertEqual(len(deleted), len(ENTITIES))
        self.assertEqual([t for t, _m, _r, _q in deleted],
                         [t for t, _m, _r, _q in client.sent[:len(ENTITIES)]])
        for _t, msg, retain, _q in deleted:
            self.assertEqual(msg, b"")
            self.assertTrue(retain)
        # Deleted: a reconnect while off sends nothing more.
        run(d, client, 10, connects=5)
        self.assertEqual(len(client.sent), 2 * len(ENTITIES))
        self.assertEqual(d.deleted, len(ENTITIES))

    def test_off_halfway_deletes_all_and_on_again_publishes_all(self):
        cfg, d = make()
        client = Client()
        run(d, client, 3)
        cfg.update({"ha_discovery": False})
        run(d, client, len(ENTITIES))
        self.assertEqual([m for _t, m, _r, _q in client.sent[3:]], [b""] * len(ENTITIES))
        cfg.update({"ha_discovery": True})
        run(d, client, len(ENTITIES))
        self.assertEqual(len(client.sent), 3 + 2 * len(ENTITIES))
        self.assertFalse(b"" in [m for _t, m, _r, _q in client.sent[-len(ENTITIES):]])

    def test_an_idle_step_allocates_nothing(self):
        if not HEAP_LOCK:
            raise unittest.SkipTest("needs micropython.heap_lock (unix port)")
        cfg, d = make()
        client = Client()
        run(d, client, len(ENTITIES))
        off_cfg, idle = make(on=False)
        micropython.heap_lock()
        try:
            for _ in range(20):
                d.step(client, 1)
                idle.step(client, 1)
        finally:
            micropython.heap_unlock()
        self.assertEqual(len(client.sent), len(ENTITIES))


class Payloads(unittest.TestCase):
    def configs(self, **kw):
        cfg, d = make(**kw)
        client = Client()
        run(d, client, len(ENTITIES))
        return dict((json.loads(m)["unique_id"].split("_", 1)[1], json.loads(m))
                    for _t, m, _r, _q in client.sent)

    def test_the_limit_command_template_makes_a_set_limit_the_station_accepts(self):
        number = self.configs()["current_limit"]
        tpl = number["command_template"]
        self.assertIn("{{ (value * 1000) | int }}", tpl)
        corr, name, args = commands.parse(tpl.replace("{{ (value * 1000) | int }}",
                                                      "16000").encode())
        self.assertEqual((name, args["limit_ma"], args["expires_s"]), ("set_limit", 16000, None))
        self.assertEqual(number["command_topic"], "cp/cp-0001/cmd")
        self.assertEqual((number["min"], number["max"], number["step"]), (0, 32, 1))

    def test_the_number_maximum_follows_the_site_limit(self):
        self.assertEqual(self.configs(max_current_ma=16000)["current_limit"]["max"], 16)

    def test_start_and_stop_buttons_press_the_station_commands(self):
        c = self.configs()
        for obj, cmd in (("start", "start"), ("stop", "stop")):
            corr, name, args = commands.parse(c[obj]["payload_press"].encode())
            self.assertEqual(name, cmd)
            self.assertEqual(c[obj]["command_topic"], "cp/cp-0001/cmd")

    def test_state_topics_are_the_station_topics_and_availability_its_status(self):
        for obj, conf in self.configs(mqtt_prefix="site7").items():
            self.assertEqual(conf["availability_topic"], "site7/cp-0001/status")
            if "state_topic" in conf:
                self.assertIn(conf["state_topic"], ("site7/cp-0001/status",
                                                    "site7/cp-0001/telemetry"))
            self.assertEqual(conf["device"]["identifiers"], ["cp-0001"])


class NodeId(unittest.TestCase):
    def test_characters_home_assistant_refuses_become_underscores(self):
        self.assertEqual(node_id("cp-0001_a"), "cp-0001_a")
        self.assertEqual(node_id("hall 2.b\u00fcro"), "hall_2_b_ro")

    def test_the_station_id_stays_the_device_name(self):
        cfg, d = make(station_id="hall 2")
        client = Client()
        d.step(client, 1)
        topic, msg, _r, _q = client.sent[0]
        self.assertEqual(topic, b"homeassistant/sensor/hall_2/state/config")
        self.assertEqual(json.loads(msg)["device"]["name"], "hall 2")


if __name__ == "__main__":
    unittest.main()
