"""wss:// (OCPP Security Profile 2): the station against a TLS central system (the `ocpp`
library behind `websockets` with an openssl-made CA, tests/system/mosquitto.py Certs). The
stand-in has no ssl, so the station runs on PyPI's 64-bit port here (counted as unix64)."""
import asyncio
import ssl

import pytest

from ocpp_cs import CentralSystem, Station
from tools.devicefiles import MICROPYTHON64


def server_context(key, crt):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx


async def attempt(tmp, key, crt, ca, host="localhost", run_ms=5000, until=None):
    cs = CentralSystem()
    port = await cs.start(ssl=server_context(key, crt))
    st = await Station.start(tmp, "wss://%s:%d/ocpp" % (host, port), runtime=MICROPYTHON64,
                             config={"ocpp_ca_file": ca})
    try:
        snap = await st.run(run_ms, until=until)
        return cs, snap
    finally:
        await st.close()
        await cs.stop()


@pytest.mark.parametrize("runtime", ["unix64"])     # counted as such in make test's SUMMARY
def test_wss_checks_the_ca_and_the_host_name(runtime, certs, tmp_dir):
    async def scenario():
        # The right CA, a certificate naming localhost: registered over TLS, Basic auth inside.
        cs, snap = await attempt(tmp_dir + "/ok", certs.server_key, certs.server_crt,
                                 certs.ca_crt, until="online", run_ms=20000)
        assert snap["online"] and len(cs.actions("BootNotification")) == 1
        assert cs.auth_seen[0].startswith("Basic ")
        # Our CA, but a certificate for another host name: refused, and said so.
        key, crt = certs.server_for("cs.example.org")
        cs, snap = await attempt(tmp_dir + "/host", key, crt, certs.ca_crt)
        assert not snap["online"] and cs.calls == [] and cs.auth_seen == []
        assert "tls" in snap["stats"]["error"], snap["stats"]
        # A certificate from an unrelated CA: refused, and said so.
        _other, key, crt = certs.other_ca("rogue")
        cs, snap = await attempt(tmp_dir + "/ca", key, crt, certs.ca_crt)
        assert not snap["online"] and cs.calls == [] and cs.auth_seen == []
        assert "tls" in snap["stats"]["error"], snap["stats"]
        # No CA configured: no connection at all rather than an unverified one.
        cs, snap = await attempt(tmp_dir + "/none", certs.server_key, certs.server_crt, "")
        assert not snap["online"] and cs.auth_seen == []
        assert snap["stats"]["error"] == "connect: wss:// needs ocpp_ca_file"
        assert snap["stats"]["connects"] == 0
    asyncio.run(asyncio.wait_for(scenario(), 200))
