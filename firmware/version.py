"""The firmware's version: in the boot event, the backend status and diag.status()/version().

VERSION follows semantic versioning (the MQTT API has its own, firmware/messages.py).
BUILD names the build: a release build sets it to the commit it was made from; a tree
that was not released says "dev". Both are constant strings: frozen, they cost no RAM.
"""

VERSION = "0.9.0"
BUILD = "dev"


def text():
    """"0.9.0 (dev)"."""
    return "%s (%s)" % (VERSION, BUILD)
