# Fixtures for tests against a real mosquitto (tests/system/mosquitto.py). pytest only.
import os
import sys
import tempfile
import shutil

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (HERE, os.path.join(ROOT, "tests", "unit")):
    if p not in sys.path:
        sys.path.insert(0, p)
# umqtt.simple (micropython-lib) for code that runs the firmware's MQTT link on CPython.
# Appended, so that micropython-lib's own `logging` never shadows the standard library's.
_MPLIB = os.path.join(ROOT, "build", "standin", "lib")
if _MPLIB not in sys.path:
    sys.path.append(_MPLIB)

import mosquitto  # noqa: E402


@pytest.fixture
def tmp_dir():
    d = tempfile.mkdtemp(prefix="cp-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker():
    """A fresh plain mosquitto on a free loopback port, stopped and removed afterwards."""
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (tools/setup.sh installs it)")
    b = mosquitto.Mosquitto()
    b.start()
    yield b
    b.close()


@pytest.fixture(scope="session")
def certs():
    """A private CA with server and client certificates, made once per test run."""
    d = tempfile.mkdtemp(prefix="cp-certs-")
    yield mosquitto.Certs(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tls_broker(certs):
    """mosquitto with a plain listener (port) and a TLS listener (tls_port)."""
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (tools/setup.sh installs it)")
    b = mosquitto.Mosquitto(tls=certs)
    b.start()
    yield b
    b.close()


@pytest.fixture
def black_hole():
    """A TCP listener that accepts and never answers."""
    h = mosquitto.BlackHole()
    yield h
    h.close()


@pytest.fixture
def ocpp(tmp_dir):
    """`async with ocpp(config=..., heap=..., cs=...) as (cs, st)`: the `ocpp` library's central
    system on a free port and the station on the stand-in pointed at it (tests/system/ocpp_cs.py),
    both stopped afterwards. Needs the `ocpp` and `websockets` packages."""
    pytest.importorskip("ocpp")
    import ocpp_cs

    def start(tmp=None, **kw):
        return ocpp_cs.session(tmp or tmp_dir, **kw)
    return start
