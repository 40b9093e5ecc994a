"""Does a collection call __del__ on memory past the end of the heap? Run on the stand-in:

    micropython -X heapsize=H gc_tail_probe.py H        (prints HIT <count>)

MicroPython v1.28.0's gc_realloc(), growing a block in place onto the heap area's last block,
records a last used block one past the end; the next collection's finaliser pass then reads
the byte after the finaliser table and takes its bits as finaliser flags of blocks past the
heap (tools/mp_patches.py). This probe makes that byte and those blocks say something it can
see: it grows a bytearray onto the last block, writes (through uctypes) a finaliser flag into
the spare byte after the table (H is chosen so that one exists and is not the heap's first
block), a head mark for the block past the end, and there an object header whose type is a
class with __del__. The collection runs; everything written is put back. HIT 1: the
collection looked past the heap and ran the finaliser on memory that is not the heap's.
"""
import gc
import sys
import uctypes

H = int(sys.argv[1])
BLOCK = 16          # 32-bit: MICROPY_BYTES_PER_GC_BLOCK, 4 words
HIT = [0]


class Canary:
    def __del__(self):
        HIT[0] += 1


def largest():
    lo, hi = 16, H
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            x = bytearray(mid)
            x = None
            lo = mid
        except MemoryError:
            hi = mid - 1
    return lo


def mem(addr, n):
    return uctypes.bytearray_at(addr, n)


n = largest()
b = bytearray(n - 4 * BLOCK)
tail = bytes(4 * BLOCK)
canary_type = id(Canary) & 0x7fffffff   # id() is a small int: bit 31 lost
saved = bytearray(16)
gc.collect()
b.extend(tail)                      # grows in place onto the heap's last block
blocks = (len(b) + BLOCK - 1) // BLOCK
end = uctypes.addressof(b) + blocks * BLOCK
start = end - H
atb_len = (H - 1) * 8 // 524       # gc_setup_area(): finaliser table, no weakref table
total = atb_len * 4
ftb = start + atb_len + 1
pool = end - total * BLOCK
oob = ftb + total // 8
# the layout as gc_setup_area() made it, and b on the last block
assert mem(start + atb_len, 1)[0] == 0, "gap byte"
assert (mem(start + (total - 1) // 4, 1)[0] >> 6) & 3 == 2, "b's last block is a tail"
assert atb_len % 2 == 0 and oob < pool, "no spare byte after the finaliser table"
# The allocation table of blocks total+4 .. total+7 is read from the finaliser table's first
# byte: block total+4+j is a head when bit 2j is set and bit 2j+1 clear.
f0 = mem(ftb, 1)[0]
j = [k for k in range(4) if not f0 & (2 << (2 * k))][0]
fake = end + (4 + j) * BLOCK
saved_oob = mem(oob, 1)[0]
saved[:] = mem(fake, 16)
mem(ftb, 1)[0] = f0 | (1 << (2 * j))
mem(oob, 1)[0] = 1 << (4 + j)
fk = mem(fake, 16)
for i in range(16):
    fk[i] = 0
fk[0] = canary_type & 0xff
fk[1] = (canary_type >> 8) & 0xff
fk[2] = (canary_type >> 16) & 0xff
fk[3] = (canary_type >> 24) & 0xff
gc.collect()
mem(fake, 16)[:] = saved
mem(oob, 1)[0] = saved_oob
bit = 1 << (2 * j)
mem(ftb, 1)[0] = (mem(ftb, 1)[0] & ~bit) | (f0 & bit)
print("HIT", HIT[0])
