#!/bin/sh
# One-shot set-up of a fresh Debian machine for building and testing the firmware.
# Idempotent: every step is skipped when its result is already there.
set -eu
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv


# Debian packages the tests need: a real MQTT broker, socat for serial ptys, openssl for
# test certificates, tmux for REPL sessions, make and a 32-bit C toolchain for the stand-in.
missing=""
for pkg_cmd in mosquitto:/usr/sbin/mosquitto socat:/usr/bin/socat openssl:/usr/bin/openssl \
        tmux:/usr/bin/tmux make:/usr/bin/make gcc:/usr/bin/gcc xz-utils:/usr/bin/xz \
        git:/usr/bin/git; do
    pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd#*:}
    [ -x "$cmd" ] || missing="$missing $pkg"
done
dpkg -s gcc-multilib >/dev/null 2>&1 || missing="$missing gcc-multilib"
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

# The ESP32 stand-in: MicroPython v1.28.0's unix port, 32-bit, with the production manifest
# frozen (tools/standin.py: the source from MICROPY_SRC, the offline copy beside this checkout,
# or a clone of the tag), and micropython-lib from the same tree into build/standin/lib.
"$VENV/bin/python" -m tools.standin build
