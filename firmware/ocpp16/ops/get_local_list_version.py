"""GetLocalListVersion (OCPP 1.6 5.9): the Local Authorization List's version; 0 when the
list is empty, -1 while LocalAuthListEnabled is false."""


def handle(b, p, now):
    return {"listVersion": b.local.reported_version()}
