# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
# The station charges while the network stalls the way the ESP32 port does (tools/bench_net.py:
# DNS 5 s, a connect that hangs, a TLS handshake of 2 s of CPU, 100 ms waits for timeouts
# below 100 ms, a half-open TCP connection). A blocking call on the control thread costs the
# simulated clock its full duration, so a loop that waited would show it here; the pilot
# changes (EV stops, unplug) must still open the contactor within one tick.
import unittest

from firmware.resolver import Resolver, is_ipv4
from firmware.storage import Store
from tools.powercut_fs import PowerCutFs
from tools import bench_net

TICK = 10


def _run(state, **kw):
    return bench_net.run_state(Store("/data", PowerCutFs()), state, trials=4,
                               settle_ms=kw.pop("settle_ms", 15000), **kw)


class ContactorOpensWhateverTheNetworkDoes(unittest.TestCase):
    def check(self, r):
        self.assertEqual(len(r["reactions_ms"]), 4)
        # One loop period (the change is seen at the next sample), whatever the network does.
        self.assertTrue(r["reaction_ms_max"] <= TICK)
        self.assertEqual(r["loop_stall_ms_max"], 0)
        self.assertTrue(r["iterations"] > 2000)

    def test_dns_down(self):
        r = _run("dns_down")
        self.check(r)
        self.assertEqual(r["control_blocked_ms"], 0)
        # Both names were looked up, off the loop, and retried; nothing connected.
        self.assertTrue(r["dns"]["failures"] >= 2)
        self.assertTrue(r["ntp_lookups"] >= 2)
        self.assertIn("dns:", r["mqtt"]["last_error"])
        self.assertEqual(r["sockets"], 0)

    def test_no_route(self):
        r = _run("no_route")
        self.check(r)
        self.assertEqual(r["control_blocked_ms"], 0)
        self.assertTrue(r["mqtt"]["failures"] >= 3)
        self.assertIn("tcp: ETIMEDOUT", r["mqtt"]["last_error"])

    def test_black_holed_broker(self):
        r = _run("black_hole")
        self.check(r)
        self.assertEqual(r["control_blocked_ms"], 0)
        self.assertEqual(r["waits"], [("getaddrinfo", 5000)] * len(r["waits"]))
        self.assertIn("connack: ETIMEDOUT", r["mqtt"]["last_error"])

    def test_silent_tls_peer(self):
        r = _run("tls_silent")
        self.check(r)
        self.assertEqual(r["control_blocked_ms"], 0)
        self.assertTrue(r["mqtt"]["tls_deferred"] > 0)
        self.assertEqual(r["mqtt"]["connects"], 0)

    def test_slow_tls_handshake_runs_only_with_the_contactor_open(self):
        r = _run("tls_slow")
        self.check(r)
        # The 2 s of crypto ran once, after the session, and the link came up.
        self.assertEqual(r["tls_handshakes"], 1)
        self.assertEqual(r["control_blocked_ms"], 2000)
        self.assertEqual(r["loop_stall_ms_max_contactor_open"], 2000)
        self.assertEqual(r["mqtt"]["state"], "online")

    def test_a_tls_handshake_due_while_charging_waits_for_the_contactor_to_open(self):
        st, b, net, stall = bench_net.build(Store("/data", PowerCutFs()), "tls_slow")
        bench_net._charge(b)

        def step():
            st.step()
            b.sleep_ms(TICK)

        # The name resolves at 5 s (in the background); the contactor closed long before.
        while b.now_ms < 8000:
            step()
        self.assertTrue(b.contactor_cmd)
        self.assertTrue(st.link.tls_deferred > 100)
        self.assertEqual(st.link._tls_ctx.handshakes, 0)
        self.assertEqual(stall.control_ms, 0)
        bench_net._unplug(b)
        t0 = b.now_ms
        while b.contactor_cmd:
            step()
        self.assertTrue(b.opened_at - t0 <= TICK)
        # Now the 2 s of crypto run, and the link comes up.
        for _ in range(300):
            step()
        self.assertEqual(st.link._tls_ctx.handshakes, 1)
        self.assertEqual(stall.control_ms, 2000)
        self.assertTrue(st.link.online)

    def test_half_open_connection(self):
        r = _run("half_open")
        self.check(r)
        self.assertEqual(r["control_blocked_ms"], 0)
        self.assertTrue(r["mqtt"]["ping_timeouts"] >= 1)
        self.assertTrue(r["mqtt"]["connects"] >= 2)

    def test_the_fake_bites_a_lookup_on_the_control_thread(self):
        # The same DNS looked up inline (as before the resolver): the loop stalls 5 s.
        st, b, net, stall = bench_net.build(Store("/data", PowerCutFs()), "dns_down",
                                            spawn=None)
        longest = 0
        for _ in range(100):
            t0 = b.ticks_ms()
            st.step()
            longest = max(longest, b.ticks_ms() - t0)
            b.sleep_ms(TICK)
        self.assertTrue(stall.control_ms >= 5000)
        self.assertTrue(longest >= 5000)


class _Manual:
    """spawn() that keeps the job until the test runs it."""

    def __init__(self):
        self.jobs = []

    def __call__(self, fn, args):
        self.jobs.append(fn)

    def run(self):
        self.jobs.pop(0)()


class ResolverCache(unittest.TestCase):
    def setUp(self):
        self.calls = []
        self.answer = [(2, 1, 0, "", ("10.1.2.3", 1883))]

    def gai(self, host, port, af, kind):
        self.calls.append(host)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def test_a_literal_is_answered_at_once_without_a_thread(self):
        spawn = _Manual()
        r = Resolver("192.168.1.5", 1883, 1, getaddrinfo=self.gai, spawn=spawn)
        self.assertEqual(r.get(0), self.answer[0])
        self.assertEqual(spawn.jobs, [])
        self.assertEqual(r.get(10000000), self.answer[0])
        self.assertEqual(self.calls, ["192.168.1.5"])

    def test_a_name_is_looked_up_off_the_caller_and_cached(self):
        spawn = _Manual()
        r = Resolver("broker.example", 1883, 1, getaddrinfo=self.gai, spawn=spawn,
                     max_age_ms=60000)
        self.assertIsNone(r.get(0))
        self.assertIsNone(r.get(10))             # one lookup in flight, no second one
        self.assertEqual(len(spawn.jobs), 1)
        self.assertEqual(self.calls, [])         # nothing ran on the caller's thread
        spawn.run()
        self.assertEqual(r.get(20), self.answer[0])
        self.assertEqual(r.get(59000), self.answer[0])
        self.assertEqual(spawn.jobs, [])
        # Old enough: looked up again, the cached address in use meanwhile.
        old = self.answer[0]
        self.answer = [(2, 1, 0, "", ("10.9.9.9", 1883))]
        self.assertEqual(r.get(60020), old)
        spawn.run()
        self.assertEqual(r.get(60030), self.answer[0])

    def test_a_failed_lookup_is_retried_later_and_refresh_keeps_the_old_address(self):
        spawn = _Manual()
        r = Resolver("broker.example", 1883, 1, getaddrinfo=self.gai, spawn=spawn,
                     retry_ms=5000)
        self.answer = OSError(-202)
        r.get(0)
        spawn.run()
        self.assertIsNone(r.get(1))
        self.assertEqual(r.failures, 1)
        self.assertIn("-202", r.last_error)
        self.assertIsNone(r.get(4000))
        self.assertEqual(spawn.jobs, [])         # not before retry_ms
        self.answer = [(2, 1, 0, "", ("10.1.2.3", 1883))]
        r.get(5001)
        spawn.run()
        self.assertEqual(r.get(5002), self.answer[0])
        r.refresh()
        self.assertEqual(r.get(5003), self.answer[0])
        self.assertEqual(len(spawn.jobs), 1)

    def test_a_real_thread_looks_the_name_up(self):
        import time
        r = Resolver("broker.example", 1883, 1, getaddrinfo=self.gai)
        got = None
        for i in range(500):
            got = r.get(i)
            if got is not None:
                break
            time.sleep(0.002)
        self.assertEqual(got, self.answer[0])
        self.assertEqual(self.calls, ["broker.example"])
        self.assertFalse(r.busy)

    def test_ipv4_literals(self):
        for ok in ("1.2.3.4", "255.255.255.255", "10.0.0.1"):
            self.assertTrue(is_ipv4(ok), ok)
        for bad in ("1.2.3", "256.1.1.1", "a.b.c.d", "broker.example", "", "1..2.3"):
            self.assertFalse(is_ipv4(bad), bad)


if __name__ == "__main__":
    unittest.main()
