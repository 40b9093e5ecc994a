"""An idle station on the OCPP backend, online for 20 simulated minutes: heartbeats at the
interval, no failure of its slow work, and a live heap that does not grow.

The station once failed from about 1 024 simulated seconds on (MemoryError, an allocation of
32 768 B, every iteration; heartbeats stopped): its meter double logged four entries per
poll on the station's heap, and the log's growth to 8 192 slots found no 32 KB run left.
"""
import asyncio

from tools.devicefiles import HEAP_GROWN

IDLE_S = 1200          # the run failed from about 1 024 s on
INTERVAL_S = 300       # HeartbeatInterval (BootNotification.conf)
CHUNK_MS = 10000       # the resolution of the heartbeat times
HEAP_EVERY = 6         # a heap figure every 6 chunks (60 s)
GROWTH_MAX = 512       # bytes the live heap may differ by between the first and last quarter


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def test_idle_online_twenty_minutes(ocpp):
    async def scenario():
        # The ESP32's heap without PSRAM once grown (tools/devicefiles.py HEAP_GROWN).
        async with ocpp(heap=HEAP_GROWN) as (cs, st):
            await st.run(30000, until="online")
            snap = await st.run(70000)           # boot and status messages done
            t0 = snap["t"]
            prev = len(cs.actions("Heartbeat"))
            beats = []                           # (station time, heartbeats so far)
            heap = []                            # (station time, live bytes after a collection)
            n = 0
            while snap["t"] - t0 < IDLE_S * 1000:
                snap = await st.run(CHUNK_MS)
                beats.append((snap["t"], len(cs.actions("Heartbeat"))))
                n += 1
                if n % HEAP_EVERY == 0:
                    heap.append((snap["t"], (await st.do("heap"))["alloc"]))
                assert snap["service_errors"] == 0, snap["last_error"]
            assert snap["online"] and snap["stats"]["connects"] == 1
            assert snap["stats"]["errors_in"] == 0 and snap["stats"]["timeouts"] == 0

            # Heartbeats: one per interval, each within a chunk of the interval after the
            # one before (nothing else was said, so nothing else resets the interval).
            sent_at = []
            for t, c in beats:
                assert c - prev <= 1, beats
                if c > prev:
                    sent_at.append(t)
                prev = c
            assert len(sent_at) >= IDLE_S // INTERVAL_S - 1, beats
            for a, b in zip(sent_at, sent_at[1:]):
                assert INTERVAL_S * 1000 - CHUNK_MS <= b - a <= INTERVAL_S * 1000 + CHUNK_MS, \
                    sent_at
            assert beats[-1][0] - sent_at[-1] <= INTERVAL_S * 1000 + CHUNK_MS

            # The live heap: the last quarter's largest figure against the first quarter's.
            q = len(heap) // 4
            first = max(b for _t, b in heap[:q])
            last = max(b for _t, b in heap[-q:])
            assert last - first <= GROWTH_MAX, heap
    run(scenario())
