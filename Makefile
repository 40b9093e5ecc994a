# Charge-point controller: build, test, simulate, deploy.
# `make test` and `make sim` set up everything they need on a fresh Debian machine.

PY      := .venv/bin/python
MPY     := .venv/bin/micropython
PORT    ?= /dev/ttyUSB0
STAMP   := build/.setup

.PHONY: all setup standin test sim station fleet bench bench-ledger bench-flash check deploy firmware flash repl clean

all: test

$(STAMP): requirements.txt tools/setup.sh tools/standin.py tools/mp_patches.py
	./tools/setup.sh
	@mkdir -p build && touch $(STAMP)

setup: $(STAMP)

# The ESP32 stand-in (32-bit MicroPython v1.28.0 unix port, manifest.py frozen): rebuilt
# incrementally by `make test` too. MICROPY_SRC=path uses your own checkout of the tag.
standin: $(STAMP)
	$(PY) -m tools.standin build

# Everything: the stand-in (incremental), mpy-cross over the device files, pytest (host tools
# and the system tests, which run the firmware on the stand-in against real peers), the unit
# tests on the stand-in beside it; ends with one SUMMARY line. TESTS=tests/unit/test_x.py
# narrows it; JOBS=N runs N pytest workers and N stand-in processes (default 2; 1: serial).
test: $(STAMP)
	$(PY) tests/run_all.py $(if $(JOBS),-j $(JOBS)) $(TESTS)

# The firmware on the unix port against the pilot-signal simulator, a simulated meter and
# (when installed) a real mosquitto, playing the default charging session; the summary
# names the trace and the picture of the session (build/pilotsim/demo.png).
# RUNTIME=standin (the default and, today, the only one: the ESP32 stand-in; another value
# is refused); HEAP=56K runs the firmware inside an ESP32's first heap area.
RUNTIME ?= standin
sim: $(STAMP)
	$(PY) -m tools.pilotsim demo --plot build/pilotsim/demo.png --runtime $(RUNTIME) \
		$(if $(HEAP),--heap $(HEAP))

# Virtual stations for backend developers: the firmware on the stand-in in real time, with a
# simulated EV and meter, on any broker until Ctrl-C (tools/station.py; `help` lists the EV
# commands). CONFIG=file.json (firmware config keys), ID=first id, N=how many stations,
# STATION_ARGS=--tls-ca ca.crt --user u --password p ...; an OCPP 1.6J central system instead
# of a broker: STATION_ARGS="--set backend=ocpp16 --set ocpp_url=ws://host:port/ocpp --set ocpp_id=CP-7"
station: $(STAMP)
	$(PY) -m tools.station $(if $(BROKER),--broker $(BROKER)) $(if $(CONFIG),--config $(CONFIG)) \
		$(if $(ID),--id $(ID)) $(if $(N),-n $(N)) $(STATION_ARGS)

# A fleet: N virtual stations (default 20) against one local broker (BROKER=mosquitto, the
# default, or rabbitmq: installed on demand, run as an own node on free ports) and a backend,
# with a broker fault; report in build/fleet.json (per broker) and build/fleet.png
# (tools/fleet.py, docs/fleet.md).
# FLEET_ARGS="--fault restart|outage|blackhole --down 60 --no-jitter --consumers 2" ...
fleet: $(STAMP)
	$(PY) -m tools.fleet $(if $(N),-n $(N)) $(if $(BROKER),--broker $(BROKER)) $(FLEET_ARGS)

bench: $(STAMP)
	$(PY) -m tools.bench

# The energy ledger property test at length: LEDGER_EXAMPLES hypothesis scenarios on CPython
# and LEDGER_SEEDS seeded ones on the stand-in (make test runs 150 and 30).
LEDGER_EXAMPLES ?= 3000
LEDGER_SEEDS ?= 1000
bench-ledger: $(STAMP)
	LEDGER_EXAMPLES=$(LEDGER_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/system/test_energy_ledger_properties.py
	LEDGER_SEEDS=$(LEDGER_SEEDS) $(PY) tests/run_all.py tests/unit/test_energy_ledger.py

# Damaged-flash boots (issue 20): the real boot.py/main.py on a littlefs image damaged every
# way tests/system/flash_campaign.py generates (every persistent file truncated, bit-flipped,
# replaced by a directory or garbage, not UTF-8, removed, torn journals, full flash,
# read-only mount, bad board files and configs, crash loops), each followed by a repaired
# boot; prints the counts, details in build/bench_flash_campaign.json (make test runs 22).
# FLASH_CASES=N runs a seeded sample of N, FLASH_SEED=S another seed.
bench-flash: $(STAMP)
	$(PY) -u -m tests.system.flash_campaign $(if $(FLASH_CASES),--cases $(FLASH_CASES)) \
		$(if $(FLASH_SEED),--seed $(FLASH_SEED))

# mpy-cross over every device file; the last line is the total .mpy size.
check: $(STAMP)
	$(PY) -m tools.deploy check

# Compile, copy to the ESP32 (service mode while copying), mip logging, reset.
# BOARD=boards/x.json picks the board file; DEPLOY_ARGS=--dry-run prints the commands only.
deploy: $(STAMP)
	$(PY) -m tools.deploy deploy --port $(PORT) $(if $(BOARD),--board $(BOARD)) $(DEPLOY_ARGS)

# The MicroPython image with the firmware frozen in (boards/CHARGER_ESP32), built by ESP-IDF
# from the MicroPython source when IDF_PATH (export.sh) and MICROPY_SRC are set; otherwise it
# prints the steps to set them up and fails. BOARD_VARIANT=SPIRAM (WROVER) or S3_SPIRAM.
# The image goes to build/firmware/CHARGER_ESP32[-VARIANT].bin.
firmware: $(STAMP)
	$(PY) -m tools.flash firmware $(if $(BOARD_VARIANT),--variant $(BOARD_VARIANT)) $(FIRMWARE_ARGS)

# Erase the chip, write the image (IMAGE=x.bin, default the one `make firmware` built), read
# the version back, then boot.py, main.py, diag and the board file (BOARD=boards/x.json); a
# stock MicroPython image (PSRAM modules) gets the firmware as .mpy files too.
# FLASH_ARGS=--dry-run prints the esptool and mpremote commands only.
flash: $(STAMP)
	$(PY) -m tools.flash flash --port $(PORT) $(if $(IMAGE),--image $(IMAGE)) \
		$(if $(BOARD_VARIANT),--variant $(BOARD_VARIANT)) $(if $(BOARD),--board $(BOARD)) $(FLASH_ARGS)

repl: $(STAMP)
	.venv/bin/mpremote connect $(PORT) repl

clean:
	rm -rf build
