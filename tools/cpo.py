"""Operator console for the stations' MQTT API (docs/mqtt.md), on CPython with paho-mqtt.

    python -m tools.cpo --host H --port P list
    python -m tools.cpo --host H --port P follow [STATION]
    python -m tools.cpo --host H --port P cmd STATION NAME ['{"limit_ma": 16000}']
    python -m tools.cpo --host H --port P collect --csv sessions.csv [--seconds 10]

Common options: --prefix (default cp), --user/--password, --tls-ca FILE (TLS with
certificate verification), --cert/--key (client certificate).

`collect` writes every session record to the CSV (once per station and id, even when a
station resends it) and acknowledges every record on the station's ack topic, so the
station stops resending. Other record kinds (faults, telemetry taken offline) are printed
as JSON lines and acknowledged too.
"""
import argparse
import csv
import json
import os
import ssl
import sys
import threading
import time

try:
    import paho.mqtt.client as mqtt
except ImportError:
    # The system Python has no paho-mqtt: say which command works instead of a traceback.
    sys.exit("python -m tools.cpo needs paho-mqtt, which this Python (%s) does not have:"
             " run `make setup`, then `.venv/bin/python -m tools.cpo ...`" % sys.executable)

API_VERSION = 1
CSV_COLUMNS = ("station", "id", "seq", "id_tag", "start_time", "stop_time", "duration_s",
               "charging_s", "energy_wh", "meter_start_wh", "meter_stop_wh", "tariff_id",
               "currency", "cost_minor", "stop_reason", "record")


def wait_first(cond, items, predicate, timeout, start=0):
    """The first of `items` (a list other threads append to under `cond`, notifying it) from
    index `start` on for which predicate(item) is true; None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with cond:
        i = start
        while True:
            while i < len(items):
                if predicate(items[i]):
                    return items[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            cond.wait(left)


class Console:
    """A backend client: remembers every message it sees, sends commands, acks records."""

    def __init__(self, host, port, prefix="cp", user=None, password=None, tls_ca=None,
                 cert=None, key=None, client_id=""):
        self.prefix = prefix
        self.messages = []          # (topic, payload (dict or bytes), retain)
        self.status = {}            # station -> last status dict
        self._cond = threading.Condition()
        self._subs = []
        self._n = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.client.username_pw_set(user, password)
        if tls_ca:
            ctx = ssl.create_default_context(cafile=tls_ca)
            if cert:
                ctx.load_cert_chain(cert, key)
            self.client.tls_set_context(ctx)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self._unacked = set()
        self.client.reconnect_delay_set(1, 2)
        self.connected = threading.Event()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise OSError("cannot connect to %s:%d" % (host, port))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        with self._cond:
            self._unacked = set()
            for topic in self._subs:
                self._unacked.add(client.subscribe(topic)[1])
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        self.connected.clear()

    def _on_subscribe(self, client, userdata, mid, reasons, properties=None):
        with self._cond:
            self._unacked.discard(mid)
            self._cond.notify_all()

    def subscribe(self, topic):
        """Subscribe (again after every reconnect) and wait for the broker's SUBACK."""
        with self._cond:
            self._subs.append(topic)
            self._unacked.add(self.client.subscribe(topic)[1])
        self.wait_ready()

    def wait_ready(self, timeout=10.0):
        """Connected with every subscription acknowledged (after a broker restart too)."""
        deadline = time.monotonic() + timeout
        if not self.connected.wait(timeout):
            return False
        with self._cond:
            while self._unacked:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _on_message(self, client, userdata, m):
        try:
            payload = json.loads(m.payload)
        except ValueError:
            payload = m.payload
        parts = m.topic.split("/")
        with self._cond:
            self.messages.append((m.topic, payload, bool(m.retain)))
            if len(parts) == 3 and parts[2] == "status" and isinstance(payload, dict):
                self.status[parts[1]] = payload
            self._cond.notify_all()

    def topic(self, station, leaf):
        return "%s/%s/%s" % (self.prefix, station, leaf)

    def wait_for(self, predicate, timeout=10.0, start=0):
        """The first message from index `start` on for which predicate(topic, payload,
        retain) is true; None after `timeout` seconds."""
        return wait_first(self._cond, self.messages, lambda m: predicate(*m), timeout, start)

    def mark(self):
        with self._cond:
            return len(self.messages)

    def on_topic(self, station, leaf, start=0):
        t = self.topic(station, leaf)
        with self._cond:
            return [p for (tp, p, _r) in self.messages[start:] if tp == t]

    def send(self, station, name, args=None, corr_id=None, raw=None):
        """Publish a command (or `raw` bytes); returns its correlation id."""
        if corr_id is None:
            self._n += 1
            corr_id = "cpo-%d-%d" % (os.getpid(), self._n)
        payload = raw if raw is not None else json.dumps(
            {"v": API_VERSION, "id": corr_id, "cmd": name, "args": args or {}})
        self.client.publish(self.topic(station, "cmd"), payload, qos=1)
        return corr_id

    def command(self, station, name, args=None, timeout=10.0):
        """Send a command and wait for its reply (a dict); None on timeout."""
        reply_topic = self.topic(station, "reply")
        if reply_topic not in self._subs:
            self.subscribe(reply_topic)
        start = self.mark()
        corr = self.send(station, name, args)
        reply_topic = self.topic(station, "reply")
        m = self.wait_for(lambda t, p, r: t == reply_topic and isinstance(p, dict)
                          and p.get("id") == corr, timeout, start)
        return m[1] if m else None

    def ack(self, station, ids):
        self.client.publish(self.topic(station, "ack"),
                            json.dumps({"v": API_VERSION, "ids": list(ids)}), qos=1)


def _row(station, rec):
    data = rec.get("data") or {}
    row = {"station": station, "id": rec.get("id"), "seq": rec.get("seq"),
           "record": json.dumps(data, sort_keys=True)}
    for col in CSV_COLUMNS:
        if col not in row:
            v = data.get(col)
            row[col] = "" if v is None else v
    return row


def collect(console, csv_path, seconds, station="+", out=sys.stdout):
    """Collect records for `seconds`; sessions go to the CSV (de-duplicated on station and
    id); every record is acknowledged. Returns the number of new session rows."""
    seen = set()
    new_file = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    if not new_file:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                seen.add((row["station"], row["id"]))
    console.subscribe("%s/%s/record" % (console.prefix, station))
    written = 0
    i = 0
    deadline = time.monotonic() + seconds
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new_file:
            w.writeheader()
        while True:
            left = deadline - time.monotonic()
            m = console.wait_for(lambda t, p, r: t.endswith("/record"), max(0.0, left), i)
            if m is None:
                break
            i = console.messages.index(m, i) + 1
            topic, rec, _retain = m
            if not isinstance(rec, dict) or "id" not in rec:
                continue
            st = topic.split("/")[1]
            if rec.get("kind") == "session":
                key = (st, str(rec["id"]))
                if key not in seen:
                    seen.add(key)
                    w.writerow(_row(st, rec))
                    f.flush()
                    written += 1
            else:
                out.write(json.dumps({"station": st, "record": rec}) + "\n")
            # Acknowledge only once the row is on disk: a crash before this means a resend.
            console.ack(st, [rec["id"]])
    return written


def _print(line, out=sys.stdout):
    out.write(line + "\n")
    out.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.cpo", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="cp")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--tls-ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("list", help="stations and their retained status")
    p.add_argument("--seconds", type=float, default=1.0)
    p = sub.add_parser("follow", help="print status, telemetry, events, replies, records")
    p.add_argument("station", nargs="?", default="+")
    p.add_argument("--seconds", type=float, default=0, help="stop after this (0 = never)")
    p = sub.add_parser("cmd", help="send a command and print the reply")
    p.add_argument("station")
    p.add_argument("name")
    p.add_argument("args", nargs="?", default="{}", help="JSON object of arguments")
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("collect", help="session records into a CSV, acknowledged")
    p.add_argument("--csv", required=True)
    p.add_argument("--station", default="+")
    p.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args(argv)

    try:
        console = Console(a.host, a.port, a.prefix, a.user, a.password, a.tls_ca, a.cert, a.key)
    except OSError as e:
        _print("error: %s" % e)
        return 2
    try:
        if a.what == "list":
            console.subscribe("%s/+/status" % a.prefix)
            time.sleep(a.seconds)
            for st in sorted(console.status):
                s = console.status[st]
                rest = {k: v for k, v in s.items() if k not in ("v", "online")}
                _print("%-20s %-8s %s" % (st, "online" if s.get("online") else "OFFLINE",
                                          json.dumps(rest, sort_keys=True)))
            return 0
        if a.what == "follow":
            console.subscribe("%s/%s/#" % (a.prefix, a.station))
            i = 0
            deadline = time.monotonic() + a.seconds if a.seconds else None
            while deadline is None or time.monotonic() < deadline:
                left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                m = console.wait_for(lambda t, p, r: True, min(1.0, left), i)
                if m is None:
                    continue
                i += 1
                t, p, r = m
                _print("%s%s %s" % (t, " (retained)" if r else "",
                                    json.dumps(p, sort_keys=True) if isinstance(p, dict)
                                    else repr(p)))
            return 0
        if a.what == "cmd":
            try:
                args = json.loads(a.args)
            except ValueError:
                _print("error: args must be a JSON object")
                return 2
            reply = console.command(a.station, a.name, args, a.timeout)
            if reply is None:
                _print("error: no reply within %.0f s" % a.timeout)
                return 1
            _print(json.dumps(reply, sort_keys=True))
            return 0 if reply.get("ok") else 1
        if a.what == "collect":
            n = collect(console, a.csv, a.seconds, a.station)
            _print("collected %d new session record(s) into %s" % (n, a.csv))
            return 0
    finally:
        console.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
