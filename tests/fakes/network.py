"""A fake ESP32 `network` module: just enough WLAN to model the ADC2 / Wi-Fi conflict
(an active interface makes ADC2 reads fail in the fake `machine`) and link state."""
import machine

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_WRONG_PASSWORD = 202
STAT_NO_AP_FOUND = 201


class WLAN:
    _active = {}

    def __init__(self, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id
        self._ssid = None

    def active(self, is_active=None):
        if is_active is None:
            return WLAN._active.get(self._if, False)
        WLAN._active[self._if] = bool(is_active)
        machine.sim.wifi_active = any(WLAN._active.values())
        if not machine.sim.wifi_active:
            machine.sim.wifi_connected = False

    def connect(self, ssid=None, key=None, **kwargs):
        if not self.active():
            raise OSError("Wifi Not Started")
        self._ssid = ssid

    def disconnect(self):
        machine.sim.wifi_connected = False

    def isconnected(self):
        return self.active() and machine.sim.wifi_connected

    def status(self, param=None):
        if param == "rssi":
            return -60
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, config=None):
        if config is None:
            if self.isconnected():
                return ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if args and args[0] == "mac":
            return machine.unique_id()
        return None


def hostname(name=None):
    return "charge-point" if name is None else None
