"""ClearCache (OCPP 1.6 5.4): empties the Authorization Cache (firmware/ocpp16/authcache.py);
Rejected while AuthorizationCacheEnabled is false or when the flash refuses."""


def handle(b, p, now):
    c = b.cache
    return {"status": "Accepted" if c.enabled and c.clear() else "Rejected"}
