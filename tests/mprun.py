"""Run unittest-style test modules on the MicroPython unix port.

micropython-lib's unittest 0.4 has TestCase and its asserts, but its main() exits 1 even when
every test passes, so this small runner discovers and runs the tests itself and ends with one
machine-readable line:  MPRUN passed=N failed=N skipped=N
Usage: micropython tests/mprun.py tests/unit/test_x.py [...]
"""
import sys
import unittest


def _module_name(path):
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".py"):
        name = name[:-3]
    return name


def run_module(path, counts):
    directory = path.rsplit("/", 1)[0] if "/" in path else "."
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = __import__(_module_name(path))
    except Exception as e:
        print("ERROR importing", path)
        sys.print_exception(e)
        counts[1] += 1
        return
    for attr in dir(module):
        cls = getattr(module, attr)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)) or cls is unittest.TestCase:
            continue
        for name in sorted(dir(cls)):
            if not name.startswith("test"):
                continue
            case = cls()
            label = "%s.%s.%s" % (_module_name(path), attr, name)
            try:
                if hasattr(case, "setUp"):
                    case.setUp()
                try:
                    getattr(case, name)()
                finally:
                    if hasattr(case, "tearDown"):
                        case.tearDown()
                counts[0] += 1
            except unittest.SkipTest as e:
                counts[2] += 1
                print("SKIP", label, e.args[0] if e.args else "")
            except BaseException as e:  # noqa: B036 - a test failure of any kind is a failure
                if isinstance(e, KeyboardInterrupt):
                    raise
                counts[1] += 1
                print("FAIL", label)
                sys.print_exception(e)


def main(paths):
    counts = [0, 0, 0]
    for path in paths:
        run_module(path, counts)
    print("MPRUN passed=%d failed=%d skipped=%d" % tuple(counts))
    return 1 if counts[1] else 0


sys.exit(main(sys.argv[1:]))
