"""Backends: the protocols the station speaks to its operator, one chosen by cfg["backend"].

api.py says what a backend implements and the result codes of the station's operations;
station_ops.py is the station side of those operations; mqtt.py and firmware/ocpp16 are the
two plug-ins. build() picks one.
"""


def build(station):
    """(link, backend) for the station's configuration. `link` is the MqttLink (the station
    reports status, telemetry and records through it) or None; `backend` implements
    firmware.backend.api.Backend, or is None when no backend is configured."""
    cfg = station.cfg
    if cfg["backend"] == "ocpp16":
        if not cfg["ocpp_url"]:
            return None, None
        from firmware.backend.station_ops import StationOps
        from firmware.ocpp16.backend import Ocpp16Backend
        return None, Ocpp16Backend(cfg, StationOps(station), station.store)
    if not cfg["mqtt_host"]:
        return None, None
    from firmware.backend.mqtt import MqttBackend
    from firmware.ledger import Ledger
    from firmware.mqtt_link import MqttLink
    # Exactly once across resets: the commands executed are kept on flash.
    link = MqttLink(cfg, cfg["station_id"], station.outbox, station,
                    wall_time=station.board.wall_time, ledger=Ledger(station.store),
                    quiet=station._may_stall)
    return link, MqttBackend(link, station)
