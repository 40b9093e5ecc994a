"""Home Assistant MQTT discovery: the station announces itself as a Home Assistant device.

With the config key `ha_discovery` on, the link publishes one retained discovery config per
entity on `homeassistant/<component>/<node_id>/<object_id>/config` (Home Assistant's MQTT
integration subscribes there and builds the entities). The entities read the station's own
topics (docs/mqtt.md): nothing extra is published for them. Set back to false, the link
publishes an empty retained payload on each of those topics, which makes Home Assistant
remove the entities and the broker forget the configs.

Memory (the ESP32 has ~56 KB of heap to start with): the definitions are one constant table
of tuples of strings, frozen in flash; the object that walks it holds a few ints and the
node id. One config is rendered and published per link step (a dict and ~700 bytes of JSON,
garbage right after), never all of them at once, and an idle step allocates nothing.

Availability is the station's retained status: its `online` flag is true while the
station is connected and false in the last will the broker publishes when the connection
dies (firmware/mqtt_link.py registers it) and in the status of a clean shutdown.
"""
import json

PREFIX = "homeassistant"          # Home Assistant's default discovery prefix

# Where an entity reads its state: the retained status, or the telemetry.
_STATUS = "status"
_TELEMETRY = "telemetry"

# A value the payload does not carry renders as "None", which Home Assistant's MQTT sensor
# takes as "unknown" (a station without a meter, telemetry outside a session, the will).
# (component, object_id, name, state source, template, device_class, state_class, unit)
#   sensor: template = value_template; number: command_template; button: payload_press
ENTITIES = (
    ("sensor", "state", "State", _STATUS,
     "{{ value_json.state if value_json.state is defined else None }}", "", "", ""),
    ("sensor", "offered_current", "Offered current", _STATUS,
     "{{ value_json.offered_ma / 1000 if value_json.offered_ma is number else None }}",
     "current", "measurement", "A"),
    ("sensor", "current", "Current", _TELEMETRY,
     "{{ value_json.current_ma | max / 1000 if value_json.current_ma is defined"
     " and value_json.current_ma else None }}",
     "current", "measurement", "A"),
    ("sensor", "power", "Power", _TELEMETRY,
     "{{ value_json.power_w if value_json.power_w is number else None }}",
     "power", "measurement", "W"),
    ("sensor", "session_energy", "Session energy", _TELEMETRY,
     "{{ value_json.session_wh if value_json.session_wh is number else None }}",
     "energy", "total_increasing", "Wh"),
    ("sensor", "total_energy", "Total energy", _TELEMETRY,
     "{{ value_json.import_wh if value_json.import_wh is number else None }}",
     "energy", "total_increasing", "Wh"),
    ("sensor", "temperature", "Temperature", _TELEMETRY,
     "{{ value_json.temp_dc / 10 if value_json.temp_dc is number else None }}",
     "temperature", "measurement", "\u00b0C"),
    ("sensor", "fault", "Active fault", _STATUS,
     "{{ (value_json.faults | join(', ') or 'none') if value_json.faults is defined"
     " else None }}", "", "", ""),
    # The station's set_limit command (docs/mqtt.md): amps from Home Assistant, mA on the wire.
    ("number", "current_limit", "Current limit", "",
     '{"v": 1, "id": "ha-limit", "cmd": "set_limit",'
     ' "args": {"limit_ma": {{ (value * 1000) | int }}}}', "current", "", "A"),
    ("button", "start", "Start charging", "", '{"v": 1, "id": "ha-start", "cmd": "start"}',
     "", "", ""),
    ("button", "stop", "Stop charging", "", '{"v": 1, "id": "ha-stop", "cmd": "stop"}',
     "", "", ""),
)

_AVAILABILITY = "{{ 'online' if value_json.online else 'offline' }}"
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def node_id(station_id):
    """The station id as a discovery topic level: Home Assistant accepts [a-zA-Z0-9_-]
    there, anything else becomes "_"."""
    out = ""
    for ch in station_id:
        out += ch if ch in _ID_CHARS else "_"
    return out


class Discovery:
    """Publishes (or deletes) the discovery configs, one per step(), following the config
    key: on -> every config, again after each reconnect (a broker without persistence has
    lost them); turned off -> an empty retained payload for each, once."""

    def __init__(self, cfg, topics, station_id):
        self.cfg = cfg
        self.topics = topics
        self.station_id = station_id
        self.node = node_id(station_id)
        self._on = False
        self._published = False    # configs may be on the broker: turning off deletes them
        self._pos = None           # next entity of the running pass; None: nothing to do
        self._connects = -1
        self.sent = 0
        self.deleted = 0

    @property
    def busy(self):
        return self._pos is not None

    def topic(self, entity):
        return ("%s/%s/%s/%s/config" % (PREFIX, entity[0], self.node, entity[1])).encode()

    def render(self, entity):
        """The discovery config of `entity` as JSON bytes."""
        comp, obj, name, source, tpl, dev_class, state_class, unit = entity
        t = self.topics
        status = t.status.decode()
        cfg = {"name": name, "unique_id": "%s_%s" % (self.node, obj),
               "availability_topic": status, "availability_template": _AVAILABILITY,
               "device": {"identifiers": [self.node], "name": self.station_id,
                          "manufacturer": "open-source charge point",
                          "model": "AC charge point (IEC 61851-1 Mode 3)"}}
        if comp == "sensor":
            cfg["state_topic"] = status if source == _STATUS else t.telemetry.decode()
            cfg["value_template"] = tpl
        else:
            cfg["command_topic"] = t.cmd.decode()
            if comp == "number":
                cfg["command_template"] = tpl
                cfg["min"] = 0
                cfg["max"] = self.cfg["max_current_ma"] // 1000
                cfg["step"] = 1
                cfg["mode"] = "box"
                cfg["optimistic"] = True     # the status carries the offer, not the limit
            else:
                cfg["payload_press"] = tpl
        if dev_class:
            cfg["device_class"] = dev_class
        if state_class:
            cfg["state_class"] = state_class
        if unit:
            cfg["unit_of_measurement"] = unit
        return json.dumps(cfg).encode()

    def step(self, client, connects):
        """One bounded piece of work while online: at most one publish. `client` is the
        umqtt client, `connects` the link's connection count (a change is a reconnect)."""
        on = self.cfg["ha_discovery"]
        if on != self._on:
            self._on = on
            self._pos = 0 if (on or self._published) else None
        elif on and connects != self._connects:
            self._pos = 0
        self._connects = connects
        pos = self._pos
        if pos is None:
            return
        entity = ENTITIES[pos]
        if on:
            client.publish(self.topic(entity), self.render(entity), True, 0)
            self._published = True
            self.sent += 1
        else:
            # An empty retained message removes the retained config and the entity.
            client.publish(self.topic(entity), b"", True, 0)
            self.deleted += 1
        pos += 1
        if pos >= len(ENTITIES):
            pos = None
            if not on:
                self._published = False
        self._pos = pos
