"""`--set KEY=VALUE` for the host tools (the simulator, `make station`): firmware settings
typed and checked by the firmware's own schema (firmware/config.py), e.g.

    --set backend=ocpp16 --set ocpp_url=ws://csms.example:9000/ocpp --set ocpp_id=CP-7
"""
from firmware import config


class SetError(ValueError):
    pass


def parse(pairs):
    """{key: typed value} of ["key=value", ...]; SetError names a bad one."""
    out = {}
    for pair in pairs or ():
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or config.spec(key) is None:
            raise SetError("--set %s: expected KEY=VALUE with a firmware setting as KEY" % pair)
        default = config.default(key)
        if default is True or default is False:
            if text.lower() not in ("true", "false", "1", "0"):
                raise SetError("--set %s: true or false" % pair)
            out[key] = text.lower() in ("true", "1")
        elif isinstance(default, int):
            try:
                out[key] = int(text)
            except ValueError:
                raise SetError("--set %s: an integer" % pair)
        else:
            out[key] = text
    return out


def uses_ocpp(cfg):
    return cfg.get("backend") == "ocpp16"
