"""The naive baseline for MQTT traffic, on the MicroPython unix port.

    micropython -m tools.bench_naive RUN.json

A client as simple as it gets: umqtt.simple, keepalive 60 s, and the station's full
status (the same payload the station publishes on <prefix>/<id>/status, built by
firmware.messages from Station.status()) published retained every 30 s, whatever changed.
Over an idle hour that is 120 publishes; nothing else is needed on the wire (a publish
every 30 s keeps a 60 s keepalive alive without PINGREQ). Nothing in it depends on time,
so the hour is its 120 publishes back to back. tools/bench.py counts the bytes on its
relay between the "naive_start" and "naive_end" marks.
"""
import sys

from firmware import messages
from firmware import config
from tools.bench_rig import ask, build, read_json, say

PERIOD_S = 30
KEEPALIVE_S = 60


def main(argv):
    import time
    from umqtt.simple import MQTTClient
    run = read_json(argv[1])
    cfg = dict(run["config"])
    mqtt_host = cfg.pop("mqtt_host")
    mqtt_port = cfg.pop("mqtt_port")
    # The payload: what this station's status says when idle (no link of its own).
    st, _b, _ = build(run["storage"], cfg)
    st.step()
    payload = messages.encode(messages.status(st.status(), True))
    topics = messages.Topics(cfg.get("mqtt_prefix", config.default("mqtt_prefix")),
                             cfg.get("station_id", config.default("station_id")))
    c = MQTTClient(b"naive-baseline", mqtt_host, mqtt_port, keepalive=KEEPALIVE_S)
    c.connect()
    time.sleep_ms(100)
    ask({"req": "mark", "name": "naive_start"})
    n = run.get("seconds", 3600) // PERIOD_S
    for _ in range(n):
        c.publish(topics.status, payload, True, 0)
    time.sleep_ms(100)
    ask({"req": "mark", "name": "naive_end"})
    c.disconnect()
    say({"result": {"publishes": n, "payload_bytes": len(payload),
                    "topic_bytes": len(topics.status), "period_s": PERIOD_S}})


if __name__ == "__main__":
    main(sys.argv)
