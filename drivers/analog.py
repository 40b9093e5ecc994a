"""Shared ADC arithmetic for the slow analogue inputs (PP, NTC)."""


def mean_mv(read_uv, samples):
    """[tick] Mean of `samples` read_uv() conversions, in millivolts (integers only)."""
    total = 0
    for _ in range(samples):
        total += read_uv()
    return total // (samples * 1000)
