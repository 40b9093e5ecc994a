# compat.presize gives the Station, the MQTT link and the session manager every attribute
# first, so that each attribute table reaches its final size before the objects it holds
# are made (docs/performance.md, Heap). The lists must name every attribute: one missing
# grows the table again late in the construction, when the heap is fragmented.
import unittest

from firmware.compat import presize
from firmware.mqtt_link import LINK_ATTRS
from firmware.ocpp16.backend import BACKEND_ATTRS
from firmware.session import MANAGER_ATTRS
from firmware.station import STATION_ATTRS, Station
from firmware.storage import Store
from firmware.ws import WS_ATTRS
from tools.powercut_fs import PowerCutFs
from tools.pilotsim.simboard import SimBoard

BACKEND = {"mqtt_host": "127.0.0.1", "mqtt_port": 9}
OCPP = {"backend": "ocpp16", "ocpp_url": "ws://127.0.0.1:9/ocpp", "ocpp_id": "CP-1"}


def _names(obj):
    return sorted(obj.__dict__)


class AttributeListsAreComplete(unittest.TestCase):
    def setUp(self):
        self.st = Station(SimBoard(), config=BACKEND, store=Store("/data", PowerCutFs()))

    def test_station(self):
        self.assertEqual(_names(self.st), sorted(STATION_ATTRS))

    def test_mqtt_link(self):
        self.assertIsNotNone(self.st.link)
        self.assertEqual(_names(self.st.link), sorted(LINK_ATTRS))

    def test_session_manager(self):
        self.assertEqual(_names(self.st.sessions), sorted(MANAGER_ATTRS))

    def test_no_name_twice(self):
        for names in (STATION_ATTRS, LINK_ATTRS, MANAGER_ATTRS, BACKEND_ATTRS, WS_ATTRS):
            self.assertEqual(len(set(names)), len(names))


class OcppAttributeListsAreComplete(unittest.TestCase):
    def setUp(self):
        self.st = Station(SimBoard(), config=OCPP, store=Store("/data", PowerCutFs()))

    def test_ocpp_backend(self):
        self.assertEqual(_names(self.st.backend), sorted(BACKEND_ATTRS))

    def test_websocket_after_a_connection_attempt(self):
        b = self.st.backend
        b.step(self.st.board.ticks_ms())        # open(): a connection's own attributes
        self.assertIsNotNone(b.ws.url)
        self.assertEqual(_names(b.ws), sorted(WS_ATTRS))
        b.ws.close_now("test")


class Presize(unittest.TestCase):
    def test_sets_every_name_to_none(self):
        class Thing:
            pass
        t = Thing()
        presize(t, ("a", "b"))
        self.assertIsNone(t.a)
        self.assertIsNone(t.b)
        t.a = 1
        self.assertEqual(t.a, 1)


if __name__ == "__main__":
    unittest.main()
