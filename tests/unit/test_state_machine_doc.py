# docs/state-machine.md shows exactly the transition table in firmware/transitions.py: its
# mermaid diagrams and its markdown tables each hold every (from, to, trigger) row once, no
# more. Plain string parsing: runs on CPython and the unix port.
import unittest

from firmware.charger import Charger
from firmware.config import Config
from firmware.states import NAMES, STATE_A
from firmware.transitions import TRANSITIONS


def _root():
    parts = __file__.split("/")
    return "." if len(parts) <= 3 else "/".join(parts[:-3])


DOC = _root() + "/docs/state-machine.md"
TABLE_HEADER = "| from | to | trigger | clause | timing | contactor |"
TRIGGER_HEADER = "| trigger | what happens |"


def read_doc():
    with open(DOC) as f:
        return f.read()


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text):
    """The page as sections: a list of (heading, diagram rows, table rows, starts), where
    rows are (from, to, trigger) in page order and starts are the [*] targets."""
    sections = []
    heading = ""
    diagram = []
    table = []
    starts = []
    in_mermaid = False
    first = False
    in_table = False
    lines = text.split("\n")
    for line in lines + ["## end"]:
        s = line.strip()
        if in_mermaid:
            if s == "```":
                in_mermaid = False
            elif first:
                if s != "stateDiagram-v2":
                    raise ValueError("%s: mermaid block is not stateDiagram-v2" % heading)
                first = False
            elif s:
                if "-->" not in s:
                    raise ValueError("%s: not an edge: %s" % (heading, s))
                left, right = s.split("-->", 1)
                if ":" in right:
                    target, label = right.split(":", 1)
                else:
                    target, label = right, ""
                left, target, label = left.strip(), target.strip(), label.strip()
                if left == "[*]":
                    starts.append(target)
                else:
                    diagram.append((left, target, label))
            continue
        if in_table:
            if s.startswith("|"):
                if not s.startswith("|---"):
                    c = _cells(s)
                    if len(c) != 6:
                        raise ValueError("%s: row needs 6 cells: %s" % (heading, s))
                    table.append((c[0], c[1], c[2]))
                continue
            in_table = False
        if s.startswith("## "):
            if heading or diagram or table:
                sections.append((heading, diagram, table, starts))
            heading, diagram, table, starts = s[3:], [], [], []
        elif s == "```mermaid":
            in_mermaid = True
            first = True
        elif s == TABLE_HEADER:
            in_table = True
    return sections


def triggers_listed(text):
    names = []
    in_table = False
    for line in text.split("\n"):
        s = line.strip()
        if s == TRIGGER_HEADER:
            in_table = True
        elif in_table and s.startswith("|"):
            if not s.startswith("|---"):
                names.append(_cells(s)[0].strip("`"))
        elif in_table:
            break
    return names


def _dups(rows):
    seen = set()
    out = []
    for r in rows:
        if r in seen:
            out.append(r)
        seen.add(r)
    return out


def differences(text, table=TRANSITIONS):
    """Every way the page differs from `table`, as messages (empty when equal)."""
    out = []
    want = set(table)
    diagram = []
    rows = []
    starts = []
    for heading, d, t, s in parse(text):
        diagram += d
        rows += t
        starts += s
        if set(d) != set(t):
            out.append("section %r: diagram and table differ: %s" % (
                heading, sorted(set(d) ^ set(t))))
    for what, got in (("diagram", diagram), ("table", rows)):
        for r in _dups(got):
            out.append("%s: %s twice" % (what, r))
        for r in sorted(want - set(got)):
            out.append("%s: missing %s -> %s (%s)" % ((what,) + r))
        for r in sorted(set(got) - want):
            out.append("%s: not in the code: %s -> %s (%s)" % ((what,) + r))
    if starts != ["A"]:
        out.append("diagram: the initial state must be [*] --> A once, got %s" % starts)
    used = sorted(set(r[2] for r in table))
    listed = triggers_listed(text)
    if sorted(listed) != used or len(set(listed)) != len(listed):
        out.append("trigger table %s != triggers used %s" % (listed, used))
    return out


class TheTable(unittest.TestCase):
    def test_rows_are_unique_and_name_real_states(self):
        self.assertEqual(_dups(TRANSITIONS), [])
        for a, b, trigger in TRANSITIONS:
            self.assertIn(a, NAMES)
            self.assertIn(b, NAMES)
            self.assertNotEqual(a, b)
            self.assertTrue(0 < len(trigger) <= 12 and " " not in trigger, trigger)

    def test_every_state_is_entered_and_left(self):
        for name in NAMES:
            self.assertTrue([r for r in TRANSITIONS if r[0] == name], name)
            self.assertTrue([r for r in TRANSITIONS if r[1] == name], name)

    def test_the_charger_starts_in_a(self):
        self.assertEqual(Charger(Config({})).state, STATE_A)


class TheDoc(unittest.TestCase):
    def test_the_doc_shows_exactly_the_table(self):
        self.assertEqual(differences(read_doc()), [])

    def test_every_diagram_and_table_has_rows(self):
        sections = [s for s in parse(read_doc()) if s[1] or s[2]]
        self.assertTrue(len(sections) >= 2)
        for heading, d, t, _ in sections:
            self.assertTrue(d and t, heading)

    def test_a_missing_table_row_is_found(self):
        text = read_doc()
        line = "| C2 | B2 | ev_stops |"
        start = text.index(line)
        end = text.index("\n", start)
        diffs = differences(text[:start] + text[end + 1:])
        self.assertTrue([d for d in diffs if "table: missing C2 -> B2" in d], diffs)

    def test_a_missing_diagram_edge_is_found(self):
        diffs = differences(read_doc().replace("    C2 --> B2: ev_stops\n", ""))
        self.assertTrue([d for d in diffs if "diagram: missing C2 -> B2" in d], diffs)

    def test_an_edge_the_code_lacks_is_found(self):
        table = tuple(r for r in TRANSITIONS if r != ("C2", "B2", "ev_stops"))
        diffs = differences(read_doc(), table)
        self.assertTrue([d for d in diffs if "diagram: not in the code: C2 -> B2" in d], diffs)
        self.assertTrue([d for d in diffs if "table: not in the code: C2 -> B2" in d], diffs)

    def test_a_wrong_trigger_is_found(self):
        diffs = differences(read_doc().replace("| C2 | B2 | ev_stops |", "| C2 | B2 | unplug |"))
        self.assertTrue([d for d in diffs if "C2 -> B2 (unplug)" in d], diffs)

    def test_a_diagram_that_is_not_a_state_diagram_is_refused(self):
        text = read_doc().replace("stateDiagram-v2", "graph TD", 1)
        self.assertRaises(ValueError, parse, text)
