"""A fake ESP32 `network` module: just enough WLAN to model the ADC2 / Wi-Fi conflict
(an active interface makes ADC2 reads fail in the fake `machine`) and link state.

Link state as ports/esp32/network_wlan.c keeps it: tests set `machine.sim.wifi_connected`
(the station got an IP) and `sim.wifi_disconn_reason` (the reason of the last
WIFI_EVENT_STA_DISCONNECTED, 0 for none); status() derives its code from those and from
whether connect() was asked for, as network_wlan_status does."""
import machine

# ports/esp32/modnetwork.h: STAT_IDLE.. (network_status_t); ports/esp32/modnetwork_globals.h:
# STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD... are ESP-IDF WIFI_REASON_* codes
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_BEACON_TIMEOUT = 200
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_REASON_ASSOC_LEAVE = 8
_REASON_CONNECTION_FAIL = 205


# ports/esp32/network_wlan.c: network_wlan_make_new (STA_IF and AP_IF)
class WLAN:
    _active = {}
    _requested = False

    def __init__(self, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id
        self._ssid = None

    # ports/esp32/network_wlan.c: network_wlan_active
    def active(self, is_active=None):
        if is_active is None:
            return WLAN._active.get(self._if, False)
        WLAN._active[self._if] = bool(is_active)
        machine.sim.wifi_active = any(WLAN._active.values())
        if not machine.sim.wifi_active:
            machine.sim.wifi_connected = False

    # ports/esp32/network_wlan.c: network_wlan_connect (esp_wifi_connect: OSError "Wifi Not
    # Started" while inactive); sets wifi_sta_connect_requested
    def connect(self, ssid=None, key=None, **kwargs):
        if not self.active():
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        WLAN._requested = True
        machine.sim.wifi_disconn_reason = 0

    # ports/esp32/network_wlan.c: network_wlan_disconnect (the event's reason is ASSOC_LEAVE)
    def disconnect(self):
        WLAN._requested = False
        machine.sim.wifi_connected = False
        machine.sim.wifi_disconn_reason = _REASON_ASSOC_LEAVE

    # ports/esp32/network_wlan.c: network_wlan_isconnected (wifi_sta_connected: IP obtained)
    def isconnected(self):
        return self.active() and machine.sim.wifi_connected

    # ports/esp32/network_wlan.c: network_wlan_status
    def status(self, param=None):
        if param == "rssi":
            return -60
        if self.isconnected():
            return STAT_GOT_IP
        reason = getattr(machine.sim, "wifi_disconn_reason", 0)
        if reason == _REASON_CONNECTION_FAIL:
            return STAT_WRONG_PASSWORD
        if reason in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
            return reason
        if reason == _REASON_ASSOC_LEAVE:
            return STAT_IDLE
        if WLAN._requested and self.active():
            return STAT_CONNECTING     # wifi_sta_connect_requested, reconnects unlimited
        return reason or STAT_IDLE

    # ports/esp32/network_common.c: esp_ifconfig
    def ifconfig(self, config=None):
        if config is None:
            if self.isconnected():
                return ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    # ports/esp32/network_wlan.c: network_wlan_config
    def config(self, *args, **kwargs):
        if args and args[0] == "mac":
            return machine.unique_id()
        return None


# extmod/modnetwork.c: mod_network_hostname
def hostname(name=None):
    return "charge-point" if name is None else None
