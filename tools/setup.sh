#!/bin/sh
# One-shot set-up of a fresh Debian machine for building and testing the firmware.
# Idempotent: every step is skipped when its result is already there.
set -eu
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
MPLIB=build/mplib

# Debian packages the tests need: a real MQTT broker, socat for serial ptys, openssl for
# test certificates, tmux for REPL sessions.
missing=""
for pkg_cmd in mosquitto:/usr/sbin/mosquitto socat:/usr/bin/socat openssl:/usr/bin/openssl tmux:/usr/bin/tmux; do
    pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd#*:}
    [ -x "$cmd" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q $missing >/dev/null 2>&1 || {
        $SUDO apt-get update -q >/dev/null
        $SUDO apt-get install -y -q $missing >/dev/null
    }
    # The package starts a system broker on 1883; the tests run their own on free ports.
    $SUDO systemctl stop mosquitto >/dev/null 2>&1 || true
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PY" -m venv "$VENV"
fi
if ! cmp -s requirements.txt "$VENV/.requirements"; then
    echo "setup: installing PyPI packages"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$VENV/.requirements"
fi

# micropython-lib modules the firmware uses on the unix port. They are old sdists without
# setup.py, so `pip download` fails after unpacking: keep the unpacked tree and copy the modules.
if [ ! -f "$MPLIB/.done" ]; then
    echo "setup: fetching micropython-lib modules into $MPLIB"
    tmp=$(mktemp -d)
    for spec in micropython-umqtt.simple==1.3.4 micropython-logging==0.5.2 micropython-unittest==0.4; do
        TMPDIR=$tmp "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-clean \
            -d "$tmp" "$spec" >/dev/null 2>&1 || true
    done
    mkdir -p "$MPLIB/umqtt" "$MPLIB/logging"
    f=$(find "$tmp" -path '*umqtt/simple.py' | head -n 1); [ -n "$f" ] && cp "$f" "$MPLIB/umqtt/simple.py"
    touch "$MPLIB/umqtt/__init__.py"
    f=$(find "$tmp" -path '*logging/__init__.py' | head -n 1); [ -n "$f" ] && cp "$(dirname "$f")"/*.py "$MPLIB/logging/"
    f=$(find "$tmp" -name unittest.py | head -n 1); [ -n "$f" ] && cp "$f" "$MPLIB/unittest.py"
    rm -rf "$tmp"
    for m in umqtt/simple.py logging/__init__.py unittest.py; do
        [ -f "$MPLIB/$m" ] || { echo "setup: could not fetch $m from micropython-lib" >&2; exit 1; }
    done
    touch "$MPLIB/.done"
fi
