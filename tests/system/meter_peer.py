"""A simulated energy meter on a real Modbus server: pymodbus, RTU framing over TCP.

The server is pymodbus (its request handling, datastore and exception replies are the real
thing); the register contents are encoded from firmware/meters.py maps, so the peer shows
exactly what an SDM630, ABB B23, EM340, ... would put on the bus. Connect the firmware's
master through tools/tcpuart.py (CPython or the MicroPython unix port).

    from tests.system.meter_peer import MeterPeer

    with MeterPeer("sdm630", {"import_wh": 12345678, "current_ma": [16000, 16000, 0]}) as peer:
        uart = open_stream(peer.spec)            # "tcp:127.0.0.1:<free port>"
        ...
        peer.set_values(import_wh=12345700)      # live update, next reply shows it
        peer.inject("crc", count=1)              # the next reply has a broken CRC

Values are in firmware units (`voltage_dv`, `current_ma` as lists of 3 or per phase as
`voltage_l1_dv` ... `current_l3_ma`, `power_w`, `import_wh`, `export_wh`); anything not
given comes from DEFAULT_VALUES. `set_register(addr, word)` writes a raw register (e.g.
a NaN). Registers outside the map answer exception 02 (illegal data address); a map whose
meter allows reading through unused registers (max_gap > 0) serves zeros there.

A map with a serial-number register (Eastron 0xFC00 on FC03, ABB 0x8900; see the map's
`serial`) serves `serial` (default DEFAULT_SERIAL) there, on that register's own function
code; `set_serial(n)` changes it live, so a test can exchange the meter mid-session:

        peer.set_serial(20240002)               # another meter on the same address ...
        peer.set_values(import_wh=1500)         # ... whose register shows its own count

Fault injection (one fault at a time, for the next `count` replies or until cleared):
    "crc"          last CRC byte flipped
    "no_reply"     the request is swallowed
    "exception"    exception reply with `code` (1 illegal function, 2 illegal address,
                   3 illegal value, 4 device failure)
    "wrong_slave"  the reply carries another slave id (valid CRC)
    "truncated"    only the first half of the frame is sent
    "garbage"      `garbage` bytes are sent before the frame
    "delay"        the reply is sent `delay_ms` late
Requests to slave ids not served get no reply at all, as on RS-485.

Counters: `requests` (frames received), `replies` (frames sent), `faults_applied`,
`rx_bytes` / `tx_bytes` (bytes on the wire each way).
Also runnable: python -m tests.system.meter_peer --map sdm630 --port 5020
"""
import asyncio
import logging
import socket
import threading

from firmware import meters
from firmware.modbus import crc16

DEFAULT_VALUES = {
    "voltage_dv": [2301, 2315, 2288],
    "current_ma": [15999, 16012, 15987],
    "power_w": 11034,
    "import_wh": 12345678,
    "export_wh": 4321,
}

DEFAULT_SERIAL = 20240001

FAULTS = ("crc", "no_reply", "exception", "wrong_slave", "truncated", "garbage", "delay")


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def values_list(values):
    """Firmware-unit values (dict, see module doc) as a list indexed by quantity."""
    out = [None] * meters.N_QUANTITIES
    for k, v in values.items():
        if k == "voltage_dv":
            out[meters.V_L1:meters.V_L3 + 1] = list(v)
        elif k == "current_ma":
            out[meters.I_L1:meters.I_L3 + 1] = list(v)
        elif k in meters.QUANTITY_NAMES:
            out[meters.QUANTITY_NAMES.index(k)] = v
        else:
            raise ValueError("unknown quantity %r (one of voltage_dv, current_ma, %s)"
                             % (k, ", ".join(meters.QUANTITY_NAMES)))
    return out


class _Meter:
    def __init__(self, slave, meter_map, values, serial=DEFAULT_SERIAL):
        self.slave = slave
        self.map = meter_map
        self.values = [0] * meters.N_QUANTITIES
        self._merge(DEFAULT_VALUES)
        self._merge(values or {})
        self.serial = serial
        # Live changes not yet in the datastore, per function code: {fc: {addr: word}}.
        # The serial register may sit on another function code than the values (Eastron).
        self.pending = {3: {}, 4: {}}

    def _merge(self, values):
        for q, v in enumerate(values_list(values)):
            if v is not None:
                self.values[q] = v

    def registers(self):
        regs = self.map.encode(self.values)
        if self.map.max_gap:
            for a in range(min(regs), max(regs) + 1):
                regs.setdefault(a, 0)
        return regs

    def serial_registers(self):
        """(fc, {register: u16}) of the serial number, or None (the map has none)."""
        if self.map.serial is None or self.serial is None:
            return None
        return self.map.serial[0], self.map.encode_serial(self.serial)

    def tables(self):
        """{fc: {register: u16}}: what the meter serves on each function code."""
        out = {3: {}, 4: {}}
        out[self.map.fc].update(self.registers())
        ser = self.serial_registers()
        if ser is not None:
            out[ser[0]].update(ser[1])
        return out


class MeterPeer:
    def __init__(self, map_name="sdm630", values=None, slave=1, custom_map="",
                 host="127.0.0.1", port=0, serial=DEFAULT_SERIAL):
        self.host = host
        self.port = port or free_port(host)
        self._meters = {}
        self._lock = threading.Lock()
        self._fault = None
        self._fault_left = None
        self._fault_args = {}
        self._thread = None
        self._loop = None
        self._server = None
        self.requests = 0
        self.replies = 0
        self.faults_applied = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_request = b""
        self.add_meter(slave, map_name, values, custom_map, serial)

    @property
    def spec(self):
        """The tools/tcpuart stream spec: "tcp:HOST:PORT"."""
        return "tcp:%s:%d" % (self.host, self.port)

    def add_meter(self, slave, map_name="sdm630", values=None, custom_map="",
                  serial=DEFAULT_SERIAL):
        """Serve another meter on the same bus (before start())."""
        if self._thread is not None:
            raise RuntimeError("add meters before start()")
        self._meters[slave] = _Meter(slave, meters.load_map(map_name, custom_map), values,
                                     serial)

    # -- live changes ----------------------------------------------------------------
    def set_values(self, slave=None, **values):
        """Change quantities (firmware units); the next reply shows them."""
        m = self._meters[slave or self._first()]
        with self._lock:
            m._merge(values)
            m.pending[m.map.fc].update(m.map.encode(m.values))

    def set_serial(self, serial, slave=None):
        """Show serial number `serial` from the next reply on (the meter was exchanged)."""
        m = self._meters[slave or self._first()]
        if m.map.serial is None:
            raise ValueError("map %r has no serial-number register" % m.map.name)
        with self._lock:
            m.serial = serial
            fc, regs = m.serial_registers()
            m.pending[fc].update(regs)

    def set_register(self, addr, word, slave=None, fc=None):
        m = self._meters[slave or self._first()]
        with self._lock:
            m.pending[fc or m.map.fc][addr] = word & 0xFFFF

    def inject(self, fault, count=None, code=4, delay_ms=0, garbage=b"\x00\xff\x13\x37\x01"):
        if fault not in FAULTS:
            raise ValueError("unknown fault %r (one of %s)" % (fault, ", ".join(FAULTS)))
        with self._lock:
            self._fault = fault
            self._fault_left = count
            self._fault_args = {"code": code, "delay_ms": delay_ms, "garbage": bytes(garbage)}

    def clear_faults(self):
        with self._lock:
            self._fault = None

    def _first(self):
        return sorted(self._meters)[0]

    def _take_fault(self, kinds):
        """The active fault if it is one of `kinds`, counted against its budget."""
        with self._lock:
            fault = self._fault
            if fault not in kinds:
                return None, None
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self._fault = None
            self.faults_applied += 1
            return fault, dict(self._fault_args)

    # -- pymodbus hooks (run in the server's thread) -------------------------------------
    def _make_action(self, meter):
        async def action(func_code, start_address, address, count, registers, set_values):
            with self._lock:
                # `registers` is the whole table of this function code: apply its pending
                # words; the other table's stay pending until it is read.
                pending = meter.pending.get(func_code, {})
                for a, w in pending.items():
                    if 0 <= a - start_address < len(registers):
                        registers[a - start_address] = w
                pending.clear()
            fault, args = self._take_fault(("exception", "delay"))
            if fault == "delay":
                await asyncio.sleep(args["delay_ms"] / 1000)
            elif fault == "exception":
                from pymodbus.constants import ExcCodes
                return ExcCodes(args["code"])
            return None
        return action

    def _trace(self, sending, data):
        if not sending:
            self.requests += 1
            self.rx_bytes += len(data)
            self.last_request = bytes(data)
            return data
        if not data or data[0] not in self._meters:
            return b""          # RS-485 slaves that are not addressed stay silent
        fault, args = self._take_fault(("crc", "no_reply", "wrong_slave", "truncated",
                                        "garbage"))
        frame = bytearray(data)
        if fault == "no_reply":
            return b""
        if fault == "crc":
            frame[-1] ^= 0x5A
        elif fault == "wrong_slave":
            frame[0] = frame[0] % 247 + 1
            c = crc16(frame, 0, len(frame) - 2)
            frame[-2] = c & 0xFF
            frame[-1] = c >> 8
        elif fault == "truncated":
            frame = frame[:len(frame) // 2]
        elif fault == "garbage":
            frame = bytearray(args["garbage"]) + frame
        self.replies += 1
        self.tx_bytes += len(frame)
        return bytes(frame)

    # -- lifecycle ------------------------------------------------------------------
    def _devices(self):
        from pymodbus.simulator import SimData, SimDevice, DataType
        devices = []
        def block(regs):
            if not regs:
                # Only the function codes the meter uses see registers, as on the meters.
                return [SimData(0xFFFF, datatype=DataType.INVALID)]
            out = []
            addrs = sorted(regs)
            j = 0
            while j < len(addrs):
                k = j
                while k + 1 < len(addrs) and addrs[k + 1] == addrs[k] + 1:
                    k += 1
                out.append(SimData(addrs[j], values=[regs[a] for a in addrs[j:k + 1]],
                                   datatype=DataType.REGISTERS))
                j = k + 1
            return out

        for slave, m in sorted(self._meters.items()):
            tables = m.tables()
            bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
            devices.append(SimDevice(slave, simdata=(bits, list(bits), block(tables[3]),
                                                     block(tables[4])),
                                     action=self._make_action(m)))
        return devices

    def start(self):
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusTcpServer
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        devices = self._devices()
        ready = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def serve():
                self._server = ModbusTcpServer(devices, framer=FramerType.RTU,
                                               address=(self.host, self.port),
                                               trace_packet=self._trace)
                await self._server.serve_forever(background=True)

            try:
                loop.run_until_complete(serve())
            except Exception as e:      # reported to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.shutdown())
            # Replies still being delayed by a "delay" fault die with the peer.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="meter-peer", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("meter peer did not start")
        if failure:
            raise RuntimeError("meter peer failed to start: %s" % failure[0])
        return self

    def stop(self):
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    import argparse
    import time
    p = argparse.ArgumentParser(description="Serve a simulated energy meter (RTU over TCP)")
    p.add_argument("--map", default="sdm630", choices=meters.BUILTIN_NAMES)
    p.add_argument("--addr", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    args = p.parse_args(argv)
    with MeterPeer(args.map, slave=args.addr, host=args.host, port=args.port) as peer:
        print("serving %s at address %d on %s" % (args.map, args.addr, peer.spec), flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
