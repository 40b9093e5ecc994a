"""Technician tool: read an energy meter over RS-485 and show what the firmware would see.

    python -m tools.meter --port /dev/ttyUSB0 --baud 9600 --map sdm630 --addr 1
    python -m tools.meter --port /dev/ttyUSB0 --scan             # which addresses answer
    python -m tools.meter --port tcp:127.0.0.1:5020 --map em340    # a simulated meter

It drives the firmware's own MeterService and ModbusMaster (same maps, same checks) over
pyserial, or over tools/tcpuart for `tcp:HOST:PORT`. USB RS-485 adapters switch direction
by themselves, so no DE line is driven. Host side only (CPython).
Exit status: 0 read OK, 1 no (plausible) reading / nothing found, 2 bad arguments.
"""
import argparse
import json
import sys

from firmware import meters
from firmware.compat import ticks_ms, sleep_ms, ticks_diff
from firmware.config import Config, ConfigError
from firmware.meter_service import MeterService, NEW_READING
from firmware.modbus import ModbusMaster, DONE, ERROR, ERR_EXCEPTION


class SerialStream:
    """pyserial as the meter_uart contract: write / any / readinto / read / flush."""

    def __init__(self, port, baud, parity):
        import serial
        parities = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
        self._ser = serial.Serial(port, baud, bytesize=8, parity=parities[parity],
                                  stopbits=1, timeout=0, write_timeout=1)

    def write(self, buf):
        return self._ser.write(bytes(buf))

    def any(self):
        return self._ser.in_waiting

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else nbytes
        data = self._ser.read(n)
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)

    def read(self, n):
        return self._ser.read(n) or None

    def flush(self):
        self._ser.flush()

    def close(self):
        self._ser.close()


def open_stream(port, baud, parity):
    if port.startswith("tcp:"):
        from tools.tcpuart import open_stream as open_tcp
        return open_tcp(port)
    return SerialStream(port, baud, parity)


def _fmt_scaled(value, div, decimals):
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    v = abs(value)
    return "%s%d.%0*d" % (sign, v // div, decimals, v % div)


def format_reading(svc):
    lines = []
    n = svc.phases
    lines.append("  voltage  " + "  ".join("L%d %s V" % (k + 1, _fmt_scaled(svc.voltage_dv[k], 10, 1))
                                          for k in range(n)))
    lines.append("  current  " + "  ".join("L%d %s A" % (k + 1, _fmt_scaled(svc.current_ma[k], 1000, 3))
                                          for k in range(n)))
    lines.append("  power    %d W" % svc.power_w)
    lines.append("  import   %s kWh" % _fmt_scaled(svc.import_wh, 1000, 3))
    if svc.has_export:
        lines.append("  export   %s kWh" % _fmt_scaled(svc.export_wh, 1000, 3))
    else:
        lines.append("  export   (this meter has no export register)")
    return "\n".join(lines)


def format_stats(stats):
    keys = ("requests", "replies", "timeouts", "crc_errors", "exceptions", "bad_frames",
            "retries")
    return "bus: " + ", ".join("%s %d" % (k, stats[k]) for k in keys)


def read_meter(cfg, stream, count=1, limit_ms=None):
    """Poll until `count` readings arrived or the meter went stale. Returns the service."""
    svc = MeterService(cfg, stream)
    got = 0
    start = ticks_ms()
    if limit_ms is None:
        limit_ms = (count + cfg["meter_stale_after"] + 1) * \
            (cfg["meter_poll_ms"] + len(svc.map.plan) * cfg["meter_timeout_ms"] *
             (cfg["meter_retries"] + 1))
    while got < count and not svc.stale and ticks_diff(ticks_ms(), start) < limit_ms:
        if svc.poll(ticks_ms()) & NEW_READING:
            got += 1
            yield svc
        sleep_ms(2)
    if got < count:
        yield svc


def scan(stream, cfg, first, last, out=sys.stdout):
    """Addresses that answer a read of the map's first block (any reply, even an
    exception, means a device is there)."""
    mmap = meters.load_map(cfg["meter_map"], cfg["meter_custom_map"])
    master = ModbusMaster(stream, cfg["meter_baud"], cfg["meter_parity"],
                          timeout_ms=cfg["meter_timeout_ms"], retries=0)
    start, count = mmap.plan[0][0], mmap.plan[0][1]
    found = []
    for addr in range(first, last + 1):
        master.start_read(addr, mmap.fc, start, count)
        while True:
            status = master.poll(ticks_ms())
            if status == DONE or status == ERROR:
                break
            sleep_ms(1)
        if status == DONE or master.error == ERR_EXCEPTION:
            note = "" if status == DONE else " (exception %d)" % master.exception_code
            out.write("address %d answers%s\n" % (addr, note))
            found.append(addr)
    out.write("%d of %d addresses answer\n" % (len(found), last - first + 1))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.meter", description=__doc__.split("\n")[0])
    p.add_argument("--port", required=True, help="serial device, or tcp:HOST:PORT")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", default="N", choices=("N", "E", "O"))
    p.add_argument("--map", default="sdm630", choices=meters.BUILTIN_NAMES + ("custom",))
    p.add_argument("--custom-map", default="", help="JSON map (or @file) for --map custom")
    p.add_argument("--addr", type=int, default=1)
    p.add_argument("--timeout-ms", type=int, default=300)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--count", type=int, default=1, help="readings to take")
    p.add_argument("--interval-ms", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print readings as JSON lines")
    p.add_argument("--scan", action="store_true", help="look for responding addresses")
    p.add_argument("--scan-range", default="1-247", help="e.g. 1-10")
    args = p.parse_args(argv)
    custom = args.custom_map
    if custom.startswith("@"):
        with open(custom[1:]) as f:
            custom = f.read()
    try:
        cfg = Config({"meter_map": args.map, "meter_custom_map": custom,
                      "meter_addr": args.addr, "meter_baud": args.baud,
                      "meter_parity": args.parity, "meter_timeout_ms": args.timeout_ms,
                      "meter_retries": args.retries, "meter_poll_ms": args.interval_ms})
        meters.load_map(args.map, custom)
        lo, _, hi = args.scan_range.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 247:
            raise ValueError("scan range must lie in 1-247")
    except ValueError as e:          # ConfigError and MeterMapError are ValueErrors
        p.error(str(e))
    try:
        stream = open_stream(args.port, args.baud, args.parity)
    except (OSError, ValueError) as e:
        print("cannot open %s: %s" % (args.port, e), file=sys.stderr)
        return 1
    try:
        if args.scan:
            return 0 if scan(stream, cfg, first, last) else 1
        print("meter %s at address %d on %s, %d 8%s1" % (args.map, args.addr, args.port,
                                                        args.baud, args.parity))
        ok = 0
        svc = None
        for svc in read_meter(cfg, stream, args.count):
            if svc.last_ok_ms is None or svc.stale:
                break
            ok += 1
            if args.json:
                r = svc.reading()
                r["stats"] = svc.stats()
                print(json.dumps(r))
            else:
                print(format_reading(svc))
                if svc.implausible:
                    print("  IMPLAUSIBLE: %s" % svc.implausible_reason)
        if svc is not None:
            if not ok:
                print("no reading: %s" % (svc.last_error or "no reply"))
            print(format_stats(svc.stats()))
            print("plan: %d request(s), %d bytes per poll (minimum %d)"
                  % (len(svc.map.plan), svc.map.plan_bytes(), svc.map.min_bytes()))
        return 0 if ok == args.count else 1
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
