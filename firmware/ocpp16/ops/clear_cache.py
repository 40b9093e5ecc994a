"""ClearCache (OCPP 1.6 5.4): this station keeps no authorization cache
(AuthorizationCacheEnabled is false), so there is nothing to clear and nothing refused."""


def handle(b, p, now):
    return {"status": "Accepted"}
