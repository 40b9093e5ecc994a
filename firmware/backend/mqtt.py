"""The MQTT backend: firmware.mqtt_link.MqttLink wrapped in the backend interface.

The link keeps its own wiring to the station (the station is its command target, and the
station publishes status, telemetry, events and outbox records through it): this wrapper
only gives the station one way to step, stop and ask any backend.
"""
from firmware.backend.api import Backend


class MqttBackend(Backend):
    def __init__(self, link, station):
        self.link = link
        self.station = station

    @property
    def online(self):
        return self.link.online

    def step(self, now):
        self.link.step(now)
        self.station._report(now)     # retained status and telemetry, on change

    def id_tag(self, id_tag, now):
        # The backend answers with its authorize command (docs/mqtt.md).
        self.link.publish_event({"type": "authorize_request", "id_tag": id_tag})

    def comms_lost(self, now):
        return self.link.comms_lost(now)

    def resolve(self):
        pass            # the link resolves in the background (firmware/resolver.py)

    def close(self, reason):
        self.link.close(reason)

    def stats(self):
        return self.link.stats()
