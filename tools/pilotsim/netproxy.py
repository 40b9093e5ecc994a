"""A TCP relay between the firmware and the broker that can black-hole the path.

`stall()` keeps every connection open but stops passing bytes both ways (and accepts new
connections without ever answering): what a hung broker, a dead NAT entry or a Wi-Fi link
stuck in retransmissions looks like from the station. `resume()` drops the stalled
connections (as the far end would after its own timeout) and relays again.
"""
import select
import socket
import threading

HOST = "127.0.0.1"


class NetProxy:
    def __init__(self, target_port, target_host=HOST):
        self.target = (target_host, target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.host = HOST
        self.stalled = False
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._pairs = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stall(self):
        self.stalled = True

    def resume(self):
        with self._lock:
            self.stalled = False
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a)
            _close(b)

    def _loop(self):
        while not self._stop:
            with self._lock:
                socks = [self.sock]
                if not self.stalled:
                    for a, b in self._pairs:
                        socks += [a, b]
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                continue
            for s in ready:
                if s is self.sock:
                    self._accept()
                else:
                    self._relay(s)

    def _accept(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.connections += 1
        if self.stalled:
            with self._lock:
                self._pairs.append((conn, _Dead()))
            return
        try:
            up = socket.create_connection(self.target, timeout=2)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._pairs.append((conn, up))

    def _relay(self, s):
        if self.stalled:
            return
        with self._lock:
            pair = next((p for p in self._pairs if s in p), None)
        if pair is None:
            return
        other = pair[1] if s is pair[0] else pair[0]
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            _close(pair[0])
            _close(pair[1])
            return
        try:
            other.sendall(data)
        except OSError:
            return
        if s is pair[0]:
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)

    def close(self):
        self._stop = True
        self._thread.join(2)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a)
            _close(b)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Dead:
    """Stands in for the broker side of a connection accepted while stalled."""

    def fileno(self):
        return -1

    def close(self):
        pass


def _close(s):
    try:
        s.close()
    except OSError:
        pass
