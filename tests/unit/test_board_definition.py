# The MicroPython board definition boards/CHARGER_ESP32 against what ports/esp32's build
# reads (v1.28.0: CMakeLists.txt includes mpconfigboard.cmake and mpconfigvariant_X.cmake,
# concatenates the SDKCONFIG_DEFAULTS files, freezes MICROPY_FROZEN_MANIFEST; the compiler
# includes mpconfigboard.h; the autobuild reads board.json). The core checks need only this
# repository; with the MicroPython source at /tmp/up/micropython-1.28.0 the board is also
# compared with the port's own boards. Runs on CPython and the unix port.
import json
import os
import sys
import unittest


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


ROOT = _root()
BOARD = ROOT + "/boards/CHARGER_ESP32"
PORT = "/tmp/up/micropython-1.28.0/ports/esp32"
# The keys of ports/esp32/boards/ESP32_GENERIC/board.json.
GENERIC_KEYS = ("deploy", "deploy_options", "docs", "features", "images", "mcu", "product",
                "thumbnail", "url", "variants", "vendor")
# Settings the board exists for (sdkconfig.board): reboot, never halt, with the GPIOs as
# they were (the contactor driver among them); watchdog expiry panics; brown-out reset on.
SAFETY = {"CONFIG_ESP_SYSTEM_PANIC_PRINT_REBOOT": "y", "CONFIG_ESP_TASK_WDT_PANIC": "y",
          "CONFIG_ESP_TASK_WDT_EN": "y", "CONFIG_ESP_BROWNOUT_DET": "y"}
BROWNOUT_LEVEL = "CONFIG_ESP_BROWNOUT_DET_LVL_SEL_"


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _read(path):
    with open(path) as f:
        return f.read()


def _normpath(path):
    out = []
    for part in path.split("/"):
        if part == "..":
            out.pop()
        elif part not in ("", "."):
            out.append(part)
    return ("/" if path.startswith("/") else "") + "/".join(out)


def cmake_calls(text):
    """[(command, [args])] of a CMake file: set, list, include and the like, each possibly
    spanning lines; arguments split on blanks outside quotes, quotes kept, comments dropped."""
    calls = []
    name, args, word = "", None, ""
    quoted = comment = False
    for c in text:
        if comment:
            comment = c != "\n"
            continue
        if quoted:
            word += c
            quoted = c != '"'
        elif c == '"':
            word += c
            quoted = True
        elif c == "#":
            comment = True
        elif args is None:
            if c == "(":
                args = []
            elif c not in " \t\n":
                name += c
        elif c in " \t\n)":
            if word:
                args.append(word)
                word = ""
            if c == ")":
                calls.append((name.strip(), args))
                name, args = "", None
        else:
            word += c
    return calls


def cmake_vars(text, start=None, board_dir="${MICROPY_BOARD_DIR}"):
    """The variables a CMake file leaves set, as lists, with ${VAR} of earlier values
    expanded (start: those set before it, as CMakeLists.txt includes board then variant)."""
    v = dict(start or {})
    for cmd, args in cmake_calls(text):
        if cmd == "set" and args:
            vals = []
            for a in args[1:]:
                vals += v.get(a[2:-1], []) if a.startswith("${") and a[2:-1] in v else [a]
            v[args[0]] = vals
        elif cmd == "list" and args[:1] == ["APPEND"]:
            v[args[1]] = v.get(args[1], []) + args[2:]
        elif cmd == "get_filename_component" and args[-1:] == ["ABSOLUTE"]:
            v[args[0]] = [_normpath(args[1].replace("${MICROPY_BOARD_DIR}", board_dir))]
    return v


def board_vars(variant=None):
    v = cmake_vars(_read(BOARD + "/mpconfigboard.cmake"), board_dir=BOARD)
    if variant:
        v = cmake_vars(_read(BOARD + "/mpconfigvariant_%s.cmake" % variant), v, BOARD)
    return v


def board_json():
    with open(BOARD + "/board.json") as f:
        return json.load(f)


def sdkconfig_problems(text):
    """Lines that are not `CONFIG_NAME=value` (y, n, an integer, 0x hex or a quoted string),
    and names set twice; comments and blank lines are fine."""
    bad = []
    seen = set()
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        ok = (eq == "=" and key.startswith("CONFIG_") and len(key) > 7
              and all(c.isupper() or c.isdigit() or c == "_" for c in key[7:]))
        if ok:
            body = value[1:] if value.startswith("-") else value
            ok = (value in ("y", "n") or (body.isdigit() and body != "")
                  or (value.startswith("0x") and len(value) > 2
                      and all(c in "0123456789abcdefABCDEF" for c in value[2:]))
                  or (len(value) >= 2 and value[0] == '"' and value[-1] == '"'
                      and '"' not in value[1:-1]))
        if not ok:
            bad.append("line %d: %r" % (n, line))
        elif key in seen:
            bad.append("line %d: %s set twice" % (n, key))
        seen.add(key)
    return bad


def sdkconfig_values(paths):
    """The values the concatenated files leave (later lines win, as in ESP-IDF's merge)."""
    v = {}
    for p in paths:
        for line in _read(p).split("\n"):
            line = line.strip()
            if line and not line.startswith("#"):
                key, _eq, value = line.partition("=")
                if key.startswith(BROWNOUT_LEVEL) and value == "y":
                    for k in [k for k in v if k.startswith(BROWNOUT_LEVEL)]:
                        del v[k]     # one choice: the last level selected wins
                v[key] = value
    return v


def own_sdkconfig(entries):
    """The board's own files among SDKCONFIG_DEFAULTS entries (the others are the port's)."""
    prefix = "${MICROPY_BOARD_DIR}/"
    return [BOARD + "/" + e[len(prefix):] for e in entries if e.startswith(prefix)]


def variants():
    return sorted(n[len("mpconfigvariant_"):-len(".cmake")] for n in os.listdir(BOARD)
                  if n.startswith("mpconfigvariant_") and n.endswith(".cmake"))


class BoardDefinition(unittest.TestCase):
    def test_the_files_the_build_reads_are_there(self):
        for name in ("mpconfigboard.cmake", "mpconfigboard.h", "board.json", "sdkconfig.board"):
            self.assertTrue(_exists(BOARD + "/" + name), name)
        # Each variant board.json lists is a file CMakeLists.txt can include, and back.
        self.assertEqual(sorted(board_json()["variants"]), variants())
        self.assertEqual(variants(), ["S3_SPIRAM", "SPIRAM"])
        # The project's own board file (pins of the PCB) is a different thing and stays.
        self.assertTrue(_exists(ROOT + "/boards/reference.json"))

    def test_board_json_has_the_keys_of_esp32_generic(self):
        b = board_json()
        self.assertEqual(sorted(b), sorted(GENERIC_KEYS))
        self.assertEqual(b["mcu"], "esp32")
        self.assertEqual(b["deploy_options"], {"flash_offset": "0x1000"})
        for doc in b["deploy"]:
            self.assertTrue(_exists(BOARD + "/" + doc), doc)
        for key in ("docs", "product", "thumbnail", "url", "vendor"):
            self.assertIsInstance(b[key], str)
        self.assertIsInstance(b["features"], list)
        self.assertIsInstance(b["images"], list)
        for name, text in b["variants"].items():
            self.assertTrue(name and text, name)

    def test_mpconfigboard_h_names_the_board_overridable_by_a_variant(self):
        h = _read(BOARD + "/mpconfigboard.h")
        for macro in ("MICROPY_HW_BOARD_NAME", "MICROPY_HW_MCU_NAME"):
            self.assertIn("#ifndef " + macro, h)
            self.assertIn("#define " + macro + " ", h)

    def test_cmake_sets_the_generic_sdkconfig_then_the_boards_own(self):
        v = board_vars()
        # ESP32_GENERIC sets exactly these two; this board appends its own after them.
        self.assertEqual(v["SDKCONFIG_DEFAULTS"][:2],
                         ["boards/sdkconfig.base", "boards/sdkconfig.ble"])
        self.assertEqual(own_sdkconfig(v["SDKCONFIG_DEFAULTS"]), [BOARD + "/sdkconfig.board"])
        self.assertFalse("IDF_TARGET" in v)     # the ESP32, as ESP32_GENERIC

    def test_every_sdkconfig_entry_is_the_ports_or_an_existing_board_file(self):
        for variant in [None] + variants():
            for entry in board_vars(variant)["SDKCONFIG_DEFAULTS"]:
                if entry.startswith("${MICROPY_BOARD_DIR}/"):
                    self.assertTrue(_exists(BOARD + "/" + entry.split("/", 1)[1]), entry)
                else:
                    # Relative to ports/esp32, where idf.py runs.
                    self.assertTrue(entry.startswith("boards/sdkconfig."), (variant, entry))

    def test_variants_as_the_generic_boards_do_them(self):
        spiram = board_vars("SPIRAM")
        self.assertEqual(spiram["SDKCONFIG_DEFAULTS"],
                         board_vars()["SDKCONFIG_DEFAULTS"] + ["boards/sdkconfig.spiram"])
        self.assertFalse("IDF_TARGET" in spiram)
        s3 = board_vars("S3_SPIRAM")
        self.assertEqual(s3["IDF_TARGET"], ["esp32s3"])
        self.assertEqual(s3["SDKCONFIG_DEFAULTS"][:3], ["boards/sdkconfig.base",
                                                         "boards/sdkconfig.ble",
                                                         "boards/sdkconfig.spiram_sx"])
        self.assertIn('MICROPY_HW_MCU_NAME="ESP32S3"', s3["MICROPY_DEF_BOARD"])
        for variant in variants():
            for d in board_vars(variant)["MICROPY_DEF_BOARD"]:
                name, eq, value = d.partition("=")
                self.assertTrue(eq and name.startswith("MICROPY_") and value, d)

    def test_sdkconfig_lines_are_key_value(self):
        names = [n for n in os.listdir(BOARD) if n.startswith("sdkconfig.")]
        self.assertEqual(sorted(names), ["sdkconfig.board", "sdkconfig.s3"])
        for n in names:
            self.assertEqual(sdkconfig_problems(_read(BOARD + "/" + n)), [], n)

    def test_the_checker_rejects_malformed_lines(self):
        self.assertEqual(sdkconfig_problems("# c\n\nCONFIG_A=y\nCONFIG_B=-3\nCONFIG_C=0x1F\n"
                                            'CONFIG_D="x.csv"\n'), [])
        for bad in ("CONFIG_A = y", "A=y", "CONFIG_A", "CONFIG_a=y", "CONFIG_A=yes",
                    'CONFIG_A="x', "CONFIG_A=0x", "CONFIG_A=y\nCONFIG_A=n"):
            self.assertEqual(len(sdkconfig_problems(bad)), 1, bad)

    def test_safety_settings_in_every_variant(self):
        # ESP32 level 5 is 2.70 V; the S3 counts the other way and its level 4 is 2.84 V:
        # both the first at or above the SPI flash's 2.7 V minimum.
        expected_level = {None: "5", "SPIRAM": "5", "S3_SPIRAM": "4"}
        for variant in [None] + variants():
            v = sdkconfig_values(own_sdkconfig(board_vars(variant)["SDKCONFIG_DEFAULTS"]))
            for key, value in SAFETY.items():
                self.assertEqual(v.get(key), value, (variant, key))
            levels = [k[len(BROWNOUT_LEVEL):] for k in v if k.startswith(BROWNOUT_LEVEL)]
            self.assertEqual(levels, [expected_level[variant]], variant)
            self.assertTrue(1 <= int(v["CONFIG_ESP_TASK_WDT_TIMEOUT_S"]) <= 60)

    def test_frozen_manifest_is_the_repository_manifest(self):
        manifest = board_vars()["MICROPY_FROZEN_MANIFEST"]
        self.assertEqual(manifest, [_normpath(ROOT + "/manifest.py")])
        self.assertTrue(_exists(manifest[0]))
        text = _read(manifest[0])
        # The packages it freezes resolve next to it (manifest paths are relative to it).
        packages = [line.split('"')[1] for line in text.split("\n")
                    if line.strip().startswith('package("')]
        self.assertIn("firmware", packages)
        self.assertIn("drivers", packages)
        for p in packages:
            if sys.implementation.name == "micropython":
                __import__(p)   # the stand-in runs in a tree without them: they are frozen
            else:
                self.assertTrue(_exists(ROOT + "/" + p + "/__init__.py"), p)
        # The port's own modules (_boot.py, inisetup: the filesystem) stay in the image.
        self.assertIn('include("$(PORT_DIR)/boards/manifest.py")', text)
        for variant in variants():
            self.assertEqual(board_vars(variant)["MICROPY_FROZEN_MANIFEST"], manifest)


class AgainstThePortsBoards(unittest.TestCase):
    """Only with the MicroPython v1.28.0 source at /tmp/up (read-only)."""

    def setUp(self):
        if not _exists(PORT + "/CMakeLists.txt"):
            raise unittest.SkipTest("no MicroPython source at " + PORT)

    def test_the_board_files_cmakelists_includes_are_there(self):
        text = _read(PORT + "/CMakeLists.txt")
        required = []
        for cmd, args in cmake_calls(text):
            if (cmd == "include" and args[0].startswith("${MICROPY_BOARD_DIR}/")
                    and "OPTIONAL" not in args):
                required.append(args[0].split("/", 1)[1])
        self.assertEqual(required, ["mpconfigboard.cmake",
                                    "mpconfigvariant_${MICROPY_BOARD_VARIANT}.cmake"])
        self.assertTrue(_exists(BOARD + "/mpconfigboard.cmake"))
        for variant in variants():
            self.assertTrue(_exists(BOARD + "/" + required[1].replace(
                "${MICROPY_BOARD_VARIANT}", variant)))
        # The Makefile takes a board from outside the tree by BOARD_DIR.
        self.assertIn("ifdef BOARD_DIR", _read(PORT + "/Makefile"))

    def test_board_json_keys_and_features_as_the_ports_boards(self):
        with open(PORT + "/boards/ESP32_GENERIC/board.json") as f:
            generic = json.load(f)
        ours = board_json()
        self.assertEqual(sorted(ours), sorted(generic))
        features = set()
        for name in os.listdir(PORT + "/boards"):
            if _exists(PORT + "/boards/" + name + "/board.json"):
                with open(PORT + "/boards/" + name + "/board.json") as f:
                    features.update(json.load(f).get("features", []))
        for feature in ours["features"]:
            self.assertIn(feature, features)

    def test_cmake_sets_what_the_generic_boards_set(self):
        pairs = ((None, "ESP32_GENERIC", None), ("SPIRAM", "ESP32_GENERIC", "SPIRAM"),
                 ("S3_SPIRAM", "ESP32_GENERIC_S3", None))
        for ours, board, variant in pairs:
            path = PORT + "/boards/" + board
            theirs = cmake_vars(_read(path + "/mpconfigboard.cmake"), board_dir=path)
            if variant:
                theirs = cmake_vars(_read(path + "/mpconfigvariant_%s.cmake" % variant), theirs,
                                    path)
            mine = board_vars(ours)
            for name in theirs:
                self.assertIn(name, mine, (ours, name))
            self.assertEqual(mine.get("IDF_TARGET"), theirs.get("IDF_TARGET"), ours)
            port_files = [e for e in theirs["SDKCONFIG_DEFAULTS"] if not e.startswith(path)
                          and not e.startswith("boards/" + board + "/")]
            self.assertEqual([e for e in mine["SDKCONFIG_DEFAULTS"] if e.startswith("boards/")],
                             port_files, ours)

    def test_the_port_files_named_exist_and_pass_the_same_checks(self):
        for variant in [None] + variants():
            for entry in board_vars(variant)["SDKCONFIG_DEFAULTS"]:
                if entry.startswith("boards/"):
                    text = _read(PORT + "/" + entry)
                    # The port's own files pass the checker that passes ours.
                    self.assertEqual(sdkconfig_problems(text), [], entry)
