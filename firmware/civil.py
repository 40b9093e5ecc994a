"""Seconds since 1970 (UTC) to a civil date and time, in integer arithmetic (H. Hinnant's
days-from-civil algorithm), so that it gives the same answer on every port whatever its
`time` epoch. Values above 2**30 are long ints on the ESP32: not for the safety tick."""


def civil(t):
    """(year, month, day, hour, minute, second) of `t` seconds since 1970-01-01 UTC."""
    days, rest = divmod(int(t), 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return y, m, d, rest // 3600, rest // 60 % 60, rest % 60
