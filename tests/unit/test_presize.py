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


class ModuleRoom(unittest.TestCase):
    # compat.module_room: with the room made, the next modules imported (the command
    # parser, diag at the REPL) grow neither sys.modules nor the package's table: a dict
    # grows in one new block, late, when the heap lacks it. firmware/__init__.py makes it.
    def _growth(self, n):
        # Bytes allocated by n more modules in sys.modules and in the firmware package.
        import gc
        import sys
        import firmware
        from firmware.compat import _ROOM
        names = _ROOM[:n]
        gc.collect()
        gc.disable()
        try:
            before = gc.mem_alloc()
            for name in names:
                sys.modules[name] = firmware
                setattr(firmware, name, None)
            return gc.mem_alloc() - before
        finally:
            for name in names:
                sys.modules.pop(name, None)
                if name in firmware.__dict__:
                    delattr(firmware, name)
            gc.enable()

    def test_the_room_takes_sixteen_more_modules_without_a_new_table(self):
        import gc
        import sys
        import firmware
        from firmware.compat import module_room
        if not hasattr(gc, "mem_alloc"):
            raise unittest.SkipTest("gc.mem_alloc: MicroPython")
        module_room("firmware", len(sys.modules) + 16, len(firmware.__dict__) + 16)
        self.assertEqual(self._growth(16), 0)

    def test_without_room_the_tables_grow(self):
        # The measurement sees a table grow: far past any room, they do.
        import gc
        if not hasattr(gc, "mem_alloc"):
            raise unittest.SkipTest("gc.mem_alloc: MicroPython")
        self.assertTrue(self._growth(64) > 0)
