"""The project's fixes to the MicroPython v1.28.0 source, applied to the tree both images are
built from: the stand-in (tools/standin.py) and the ESP32 image (`make firmware`,
tools/flash.py). One list, so the stand-in stays the device.

Each patch is an exact text replacement in one file, applied once: a tree that already has
the new text is left alone, a tree with neither text (another version, a local edit) stops
the build with the file's name.

    python -m tools.mp_patches [SRC]     # apply to SRC (default: the stand-in's source)
"""
import os
import sys


class PatchError(Exception):
    pass


# gc_realloc() growing a block in place records the heap's last used block as the block
# *after* the grown chain (end_block is exclusive there; gc_alloc() records the inclusive
# one). When the chain ends on the heap area's last block and the area has an even number of
# allocation-table bytes, the next collection's finaliser pass (gc_sweep_run_finalisers: the
# FTB index is inclusive) reads one byte past the finaliser table, takes its bits as
# finaliser flags for up to eight blocks past the end of the heap, and calls __del__ on
# whatever memory lies there. On the stand-in that was a segmentation fault in
# mp_load_method_maybe() (tests/system/test_heap_walk.py on a 60 KB heap, a MemoryError
# traceback being printed into a StringIO); on an ESP32 it is a crash of the same kind.
GC_REALLOC_LAST_USED = (
    "py/gc.c",
    "            ATB_FREE_TO_TAIL(area, bl);\n"
    "        }\n"
    "\n"
    "        area->gc_last_used_block = MAX(area->gc_last_used_block, end_block);\n",
    "            ATB_FREE_TO_TAIL(area, bl);\n"
    "        }\n"
    "\n"
    "        // end_block is one past the chain: the last used block is the one before it.\n"
    "        area->gc_last_used_block = MAX(area->gc_last_used_block, end_block - 1);\n",
)

PATCHES = (GC_REALLOC_LAST_USED,)


def state(src, patch):
    """'applied', 'pending' or 'unknown' for one patch on the tree at src."""
    rel, old, new = patch
    path = os.path.join(src, rel)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return "unknown"
    if text.count(new) == 1:
        return "applied"
    if text.count(old) == 1:
        return "pending"
    return "unknown"


def apply(src, patches=PATCHES, log=None):
    """Apply every pending patch to the tree at src; returns how many it applied."""
    done = 0
    for patch in patches:
        rel, old, new = patch
        st = state(src, patch)
        if st == "applied":
            continue
        if st == "unknown":
            raise PatchError("%s: the text this project patches is not there (not the "
                             "MicroPython v1.28.0 source, or edited)" % os.path.join(src, rel))
        path = os.path.join(src, rel)
        with open(path) as f:
            text = f.read()
        with open(path + ".tmp", "w") as f:
            f.write(text.replace(old, new))
        os.replace(path + ".tmp", path)
        done += 1
        if log:
            log("patched %s" % path)
    return done


def unpatched_standin(src, build_dir, patch, jobs=2):
    """The stand-in built without one of the patches, to show what the patch changes: a copy
    of the tree at src (hard links, except the patched file, which gets v1.28.0's text
    back) built into build_dir. Incremental; returns the binary's path."""
    import shutil
    import subprocess
    from tools import standin
    rel, old, new = patch
    tree = os.path.join(build_dir, "src")
    if not os.path.isdir(tree):
        os.makedirs(build_dir, exist_ok=True)
        shutil.rmtree(tree + ".tmp", ignore_errors=True)
        if subprocess.run(["cp", "-al", src, tree + ".tmp"], capture_output=True).returncode:
            shutil.rmtree(tree + ".tmp", ignore_errors=True)     # another file system
            subprocess.run(["cp", "-a", src, tree + ".tmp"], check=True)
        path = os.path.join(tree + ".tmp", rel)
        with open(path) as f:
            text = f.read()
        os.remove(path)                 # a new file: the hard link stays the patched one
        with open(path, "w") as f:
            f.write(text.replace(new, old))
        shutil.move(tree + ".tmp", tree)
    cross = os.path.join(standin.BUILD, "mpy-cross", "mpy-cross")
    r = subprocess.run(["make", "-C", os.path.join(tree, "ports", "unix"), "-j%d" % jobs]
                       + standin.UNIX_FLAGS
                       + ["BUILD=" + os.path.join(build_dir, "unix"),
                          "MICROPY_MPYCROSS=" + cross],
                       capture_output=True, text=True)
    if r.returncode:
        raise PatchError("unpatched build failed:\n" + (r.stdout + r.stderr)[-2000:])
    return os.path.join(build_dir, "unix", "micropython")


def main(argv):
    if len(argv) > 1:
        src = argv[1]
    else:
        from tools import standin
        src = standin.source_dir()
    try:
        n = apply(src, log=print)
    except PatchError as e:
        print("mp_patches: %s" % e)
        return 2
    print("%s: %d patch(es) applied now, %d in all" % (src, n, len(PATCHES)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
