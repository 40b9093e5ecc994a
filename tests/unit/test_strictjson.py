# The strict RFC 8259 checker in front of json.loads, alone and on the command path.
# Runs on CPython (pytest) and on the MicroPython unix port (tests/mprun.py).
import json
import os
import unittest

from firmware import messages, strictjson
from firmware.commands import MAX_COMMAND_BYTES, CommandDispatcher
from firmware.strictjson import JSONError, join_surrogates, validate

from mqtt_doubles import RecordingTarget


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


CORPUS = _root() + "/tests/data/json"


def corpus_dirs():
    dirs = [CORPUS]
    extra = os.getenv("JSONTESTSUITE_DIR")     # JSONTestSuite's test_parsing, when given
    if extra:
        dirs.append(extra)
    return dirs


def cases():
    """(name, bytes, expected to be accepted) for every case file."""
    out = []
    for d in corpus_dirs():
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json") or name[:2] not in ("y_", "n_", "i_"):
                continue
            with open(d + "/" + name, "rb") as f:
                data = f.read()
            out.append((name, data, name.startswith("y_") or name.startswith("i_number_")))
    return out


def refusal(data):
    try:
        validate(data)
    except JSONError as e:
        return e.args[0]
    return None


class Corpus(unittest.TestCase):
    def test_the_corpus_has_every_kind(self):
        names = [n for n in os.listdir(CORPUS) if n.endswith(".json")]
        self.assertTrue(len([n for n in names if n.startswith("y_")]) >= 40)
        self.assertTrue(len([n for n in names if n.startswith("n_")]) >= 80)
        self.assertTrue(len([n for n in names if n.startswith("i_")]) >= 10)

    def test_every_y_case_is_accepted_and_every_n_case_refused(self):
        wrong = []
        for name, data, accept in cases():
            why = refusal(data)
            if accept and why is not None:
                wrong.append((name, why))
            elif not accept and why is None:
                wrong.append((name, "accepted"))
            elif not accept and not why.startswith("byte "):
                wrong.append((name, why))
        self.assertEqual(wrong, [])

    def test_accepted_cases_load_with_json_loads(self):
        # What the checker passes, json.loads of this runtime can read.
        for name, data, accept in cases():
            if accept:
                json.loads(join_surrogates(data))

    def test_on_the_command_path(self):
        # Every accepted case that fits the command size limit gets past the JSON stage
        # (a non-object is then "expected a JSON object"); every refused one is answered
        # "not valid JSON" with no id, and the station sees none of them.
        target = RecordingTarget()
        d = CommandDispatcher(target)
        checked = 0
        for name, data, accept in cases():
            if len(data) > MAX_COMMAND_BYTES:
                continue
            checked += 1
            reply = d.handle(data, 0)
            self.assertIs(reply["ok"], False, name)
            if accept:
                self.assertFalse(reply["error"].startswith("not valid JSON"), name)
            else:
                self.assertTrue(reply["error"].startswith("not valid JSON: byte "), name)
                self.assertIsNone(reply["id"], name)
                out = messages.encode(reply)
                validate(out)
                for b in out:
                    self.assertTrue(b < 0x80, name)   # none of the bad bytes quoted
        self.assertEqual(target.calls, [])
        self.assertEqual(d.rejected, checked)
        self.assertTrue(checked >= 140)


class TheLoosenessItExistsFor(unittest.TestCase):
    # Documents MicroPython's json.loads takes and runs (checked on the unix port, 1.28).
    def test_each_is_refused_with_the_byte_offset(self):
        for doc, where in ((b'{"id":"c-1" "cmd":"reboot"}', "byte 12: expected ','"),
                           (b'{"id":"c-1","cmd":"reboot",}', "byte 27: expected a string key"),
                           (b'{"id":"c-1","cmd":"reboot"} x', "byte 28: data after"),
                           (b'{"id":"c-1","cmd":"reboot"}\x00', "byte 27: data after"),
                           (b'{"id":"c-1","cmd":"reboot","args":{"n":01}}', "byte 40"),
                           (b'{"id":1,"cmd":"set_limit","args":{"limit_ma":1.}}', "byte 47: expected a digit"),
                           (b'{"id":"\xc0\xaf","cmd":"reboot"}', "byte 7: invalid UTF-8"),
                           (b'{"id":"\xed\xa0\x80","cmd":"reboot"}', "byte 7: invalid UTF-8"),
                           (b'{"id":"\\ud800","cmd":"reboot"}', "byte 7: lone surrogate"),
                           (b'[' * 17 + b']' * 17, "byte 16: nested deeper than 16")):
            why = refusal(doc)
            self.assertIsNotNone(why, doc)
            self.assertTrue(why.startswith(where), (doc, why))

    def test_nesting_limit_is_a_parameter(self):
        self.assertIsNone(refusal(b"[[[]]]"))
        with self.assertRaises(JSONError):
            validate(b"[[[]]]", max_depth=2)
        validate(b'{"a":{"b":[]}}', max_depth=3)

    def test_works_on_memoryview_and_bytearray(self):
        doc = b'{"a": [1, "\xc3\xa9", true]}'
        for buf in (memoryview(doc), bytearray(doc), memoryview(b"xx" + doc)[2:]):
            self.assertIsNone(validate(buf))
        self.assertRaises(JSONError, validate, memoryview(b'{"a": 1,}'))


class SurrogatePairs(unittest.TestCase):
    def test_an_escaped_pair_becomes_one_character(self):
        # MicroPython's json.loads alone makes two CESU-8 "characters" of it.
        doc = b'["a\\ud83d\\ude00b", "\\uD834\\uDD1E"]'
        validate(doc)
        joined = join_surrogates(doc)
        self.assertEqual(joined, b'["a\xf0\x9f\x98\x80b", "\xf0\x9d\x84\x9e"]')
        value = json.loads(joined)
        self.assertEqual(value, ["a\U0001F600b", "\U0001D11E"])
        self.assertEqual(len(value[0]), 3)
        validate(messages.encode({"s": value[0]}))

    def test_no_pair_no_copy(self):
        doc = b'{"a": "\\u00e9\\n\\\\ud83d"}'
        self.assertIs(join_surrogates(doc), doc)

    def test_an_escaped_backslash_is_not_an_escape(self):
        doc = b'["\\\\ud83d\\\\ude00"]'
        validate(doc)
        self.assertIs(join_surrogates(doc), doc)
        self.assertEqual(json.loads(doc), ["\\ud83d\\ude00"])
