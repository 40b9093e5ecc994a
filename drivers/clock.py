"""The drivers' time source: MicroPython's `time` on the device.

Drivers that wait (the RS-485 turnaround, the pilot burst window, the crash-reset delay) take
their time functions from `source` (ticks_ms, ticks_us, ticks_diff, ticks_add, sleep_ms,
sleep_us). Off-hardware runs set it to the fake machine's simulated clock
(`clock.source = machine.sim.clock`) so a whole boot runs in simulated time.
"""
import time

source = time
