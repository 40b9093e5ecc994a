"""Every behaviour the fakes in tests/fakes model for the ESP32 names the MicroPython v1.28.0
source file (and function) it copies, and that file exists.

A public class or function of tests/fakes/machine.py, esp32.py or network.py, and each public
method of such a class, carries a comment `# ports/esp32/<file>: <function>` (or extmod/,
py/, shared/) directly above it or first in its body, or states `# not of the port: <why>`
(the simulation's own hooks, e.g. Sim). When the source is unpacked at /tmp/up (or
$MICROPYTHON_SRC), each cited file must exist there and each cited function must occur in it.

CPython only: it reads the fakes' source with ast.
"""
import os
import re
import unittest

try:
    import ast
except ImportError:     # the MicroPython unix port: this check is CPython's
    ast = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) \
    if ast is not None else "."
FAKES = ("machine.py", "esp32.py", "network.py")
SRC = os.environ.get("MICROPYTHON_SRC", "/tmp/up/micropython-1.28.0") if ast is not None else ""
CITE = re.compile(r"#\s*((?:ports/esp32|extmod|py|shared)/[\w/]+\.[ch])(?::\s*([\w, >-]+))?")
NOT_PORT = re.compile(r"#\s*not of the port: \S")


def _public_defs(tree):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node, None
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, ast.FunctionDef) and (
                            not m.name.startswith("_") or m.name in ("__init__", "__call__")):
                        yield m, node


def _comments_of(node, lines):
    """The comment lines directly above the def/class and those before its first statement
    (past the docstring), as text."""
    out = []
    i = node.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        out.append(lines[i])
        i -= 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str) and len(node.body) > 1:
        first = node.body[1]
    out.extend(l for l in lines[node.lineno:first.lineno - 1] if l.strip().startswith("#"))
    return out


def _citations():
    """{(fake, qualified name): [(file, [functions])] or 'not of the port'}"""
    found = {}
    for fake in FAKES:
        path = os.path.join(ROOT, "tests", "fakes", fake)
        with open(path) as f:
            text = f.read()
        lines = text.splitlines()
        for node, cls in _public_defs(ast.parse(text)):
            name = node.name if cls is None else "%s.%s" % (cls.name, node.name)
            comments = _comments_of(node, lines)
            cites = []
            for c in comments:
                m = CITE.search(c)
                if m:
                    funcs = [f.strip() for f in re.split(r"[,>-]+", m.group(2) or "") if f.strip()]
                    cites.append((m.group(1), funcs))
            if cites:
                found[(fake, name)] = cites
            elif any(NOT_PORT.search(c) for c in comments):
                found[(fake, name)] = "not of the port"
            elif cls is not None and (node.name == "__init__" or
                                      found.get((fake, cls.name)) == "not of the port"):
                # The constructor is the class's citation; a simulation hook's methods are
                # not of the port either.
                found[(fake, name)] = found.get((fake, cls.name))
            else:
                found[(fake, name)] = None
    return found


class FakesCiteThePort(unittest.TestCase):
    def setUp(self):
        if ast is None:
            self.skipTest("reads source with ast (CPython only)")

    def test_every_public_class_and_function_cites_its_source(self):
        found = _citations()
        missing = sorted("%s: %s" % k for k, v in found.items() if v is None)
        self.assertEqual(missing, [])
        # The rule has teeth: the port classes are there and cite.
        for key in (("machine.py", "PWM.duty_u16"), ("machine.py", "ADC.read_u16"),
                    ("machine.py", "WDT"), ("esp32.py", "NVS.commit"),
                    ("network.py", "WLAN.status")):
            self.assertTrue(isinstance(found.get(key), list), key)
        self.assertGreater(sum(1 for v in found.values() if isinstance(v, list)), 60)

    def test_cited_files_and_functions_exist_in_the_source(self):
        if not os.path.isdir(os.path.join(SRC, "ports", "esp32")):
            self.skipTest("MicroPython source not unpacked at %s" % SRC)
        bad = []
        for key, cites in sorted(_citations().items()):
            if not isinstance(cites, list):
                continue
            for path, funcs in cites:
                full = os.path.join(SRC, path)
                if not os.path.isfile(full):
                    bad.append("%s: %s missing" % (key, path))
                    continue
                with open(full, errors="replace") as f:
                    src = f.read()
                for fn in funcs:
                    word = fn.split()[0]
                    if re.fullmatch(r"\w+", word) and word not in src:
                        bad.append("%s: %s not in %s" % (key, word, path))
        self.assertEqual(bad, [])


if __name__ == "__main__":
    unittest.main()
