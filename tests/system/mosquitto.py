"""A real mosquitto for tests: its own config in a temp dir, on a free loopback port.

    with Mosquitto() as broker:                 # plain listener on broker.port
        ...
        broker.kill(); broker.start()            # same port, same config
    certs = Certs(tmpdir)                        # CA, server and client certs via openssl
    with Mosquitto(tls=certs) as broker:         # plus a TLS listener on broker.tls_port
        ...
    with BlackHole() as hole:                    # accepts TCP, never answers
        ...
    with Relay(broker.port) as relay:            # a path to the broker that can hang
        relay.stall(); relay.resume(); relay.cut()

Also used by tools and the simulator's tests: nothing here is specific to one test.
"""
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"


def available():
    return os.path.exists(MOSQUITTO)


def _user():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Certs:
    """A private CA with a server certificate for 127.0.0.1/localhost and a client
    certificate, all made with openssl in `directory`. `other_ca()` makes a second,
    unrelated CA (with its own server cert) to prove that verification refuses it."""

    def __init__(self, directory, name="test"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_name = name + "-ca"
        self.ca_key, self.ca_crt = self._ca(self.ca_name)
        self.server_key, self.server_crt = self._issue("server", name + "-ca", server=True)
        self.client_key, self.client_crt = self._issue("client", name + "-ca", server=False)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _run(self, *args):
        subprocess.run((OPENSSL,) + args, check=True, capture_output=True, cwd=self.dir)

    def _ca(self, ca):
        key, crt = self._path(ca + ".key"), self._path(ca + ".crt")
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", key, "-out", crt, "-days", "3", "-subj", "/CN=" + ca,
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return key, crt

    def server_for(self, name):
        """(key, crt) of a server certificate from this CA for host `name` only (to prove
        that the host name is checked)."""
        return self._issue("server-" + name, self.ca_name, server=True, names=("DNS:" + name,))

    def _issue(self, who, ca, server, names=("DNS:localhost", "IP:127.0.0.1")):
        key, csr, crt = (self._path("%s-%s.%s" % (ca, who, ext)) for ext in ("key", "csr", "crt"))
        ext = self._path("%s-%s.ext" % (ca, who))
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=%s\n"
                        "extendedKeyUsage=serverAuth\n" % ",".join(names))
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", key, "-out", csr, "-subj",
                  "/CN=" + (names[0].split(":", 1)[1] if server else who))
        self._run("x509", "-req", "-in", csr, "-CA", self._path(ca + ".crt"),
                  "-CAkey", self._path(ca + ".key"), "-CAcreateserial", "-out", crt,
                  "-days", "3", "-extfile", ext)
        return key, crt

    def other_ca(self, name="other"):
        """(ca_crt, server_key, server_crt) of an unrelated CA."""
        key, crt = self._ca(name + "-ca")
        skey, scrt = self._issue("server", name + "-ca", server=True)
        return crt, skey, scrt


class Mosquitto:
    """One mosquitto process. `tls` is a Certs (adds a TLS listener on tls_port);
    `server_cert` overrides the (key, crt) it presents; `require_client_cert` makes the TLS
    listener demand a client certificate; `users` {name: password} turns off anonymous
    access. Restartable on the same ports."""

    def __init__(self, tls=None, server_cert=None, require_client_cert=False, users=None,
                 directory=None, extra_config=""):
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="mosquitto-")
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.host = HOST
        self.proc = None
        self.certs = tls
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log = os.path.join(self.dir, "mosquitto.log")
        lines = ["per_listener_settings false", "persistence false",
                 # Started as root, mosquitto drops to user "mosquitto", which cannot read
                 # this private temp dir: keep the invoking user.
                 "user %s" % ("root" if os.geteuid() == 0 else _user()),
                 "log_dest file %s" % self.log, "log_type all",
                 "listener %d %s" % (self.port, HOST)]
        if users:
            pw = os.path.join(self.dir, "passwd")
            open(pw, "w").close()
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", pw, name, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", "password_file %s" % pw]
        else:
            lines.append("allow_anonymous true")
        if tls:
            key, crt = server_cert or (tls.server_key, tls.server_crt)
            lines += ["listener %d %s" % (self.tls_port, HOST),
                      "cafile %s" % tls.ca_crt, "certfile %s" % crt, "keyfile %s" % key,
                      "require_certificate %s" % ("true" if require_client_cert else "false")]
        if extra_config:
            lines.append(extra_config)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        for p in ports:
            if not wait_port(p):
                self.stop()
                raise RuntimeError("mosquitto did not listen on %d:\n%s" % (p, self.log_text()))
        return self

    def kill(self):
        """Abrupt death (SIGKILL): clients see their connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class BlackHole:
    """A TCP listener that accepts connections and never sends a byte (nor reads, so the
    peer's writes eventually block): a broker that has hung."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.host = HOST
        self.accepted = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self):
        self._stop = True
        self._thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Relay:
    """A TCP relay in front of a broker that can stall: `stall()` stops forwarding in both
    directions while keeping every connection open (a broker or a network path that hangs
    mid-session), `resume()` forwards again (held bytes included; `drop_closed=True` first
    closes the connections whose client has already gone, as a proxy that saw their FIN
    would), `cut()` closes every relayed connection (a reset)."""

    def __init__(self, upstream_port, upstream_host=HOST):
        self.upstream = (upstream_host, upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.host = HOST
        self._go = threading.Event()
        self._go.set()
        self._stop = False
        self._conns = []
        self._pairs = []           # (downstream, upstream) per relayed connection
        self.dropped = 0
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def stall(self):
        self._go.clear()

    def resume(self, drop_closed=False):
        if drop_closed:
            gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR
            for down, up in list(self._pairs):
                p = select.poll()
                try:
                    p.register(down, select.POLLIN | select.POLLRDHUP)
                    closed = any(ev & gone for _, ev in p.poll(0))
                except (OSError, ValueError):
                    closed = True
                if closed:
                    for c in (down, up):
                        try:
                            c.close()
                        except OSError:
                            pass
                    self._pairs.remove((down, up))
                    self.dropped += 1
        self._go.set()

    def cut(self):
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass
        self._conns = []

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                down, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                down.close()
                continue
            self._conns += [down, up]
            self._pairs.append((down, up))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        src.settimeout(0.1)
        while not self._stop:
            self._go.wait(0.1)
            if not self._go.is_set():
                continue
            try:
                data = src.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            while not self._go.is_set() and not self._stop:
                self._go.wait(0.1)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._stop = True
        self._go.set()
        self._thread.join(2)
        self.cut()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
