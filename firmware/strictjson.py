"""A strict RFC 8259 JSON checker for what arrives from the network, before json.loads.

MicroPython's json.loads takes documents that are not JSON and returns something anyway:
members without commas ({"a":1 "b":2}), trailing and doubled commas ([1,,2,]), leading
zeros (01), "1.", object keys that are numbers, a NUL after the document, overlong and
surrogate UTF-8 inside strings. A command the backend did not write as JSON must not run,
so every inbound payload passes validate() first.

What validate() accepts is exactly RFC 8259 JSON-text in UTF-8 (section 8.1), with three
choices where the RFC leaves it to the implementation (JSONTestSuite's i_ cases):
  - no byte order mark (section 8.1: "MUST NOT add", "MAY ignore": refused here);
  - a \\u escape of a lone surrogate (\\uD800 without its low half, or a lone low half) is
    refused: it names no character and could not be echoed as valid UTF-8;
  - nesting deeper than MAX_DEPTH arrays/objects is refused (section 9 allows a limit).
Numbers of any size are accepted (json.loads makes them floats or big ints).

Bounded memory: the checker is one iterative loop; the open arrays/objects are the bits of a
small int (1 = object), so it allocates nothing while it runs and works on bytes, bytearray
or memoryview alike without copying. Only a refusal allocates (the exception).

json.loads on MicroPython decodes each half of an escaped surrogate pair (\\ud83d\\ude00) into
its own 3-byte sequence (CESU-8): the string then has two "characters" for one and is not
valid UTF-8 when sent back. join_surrogates() rewrites such pairs as the 4-byte UTF-8 of
their character before json.loads, so both runtimes decode the same string.
"""

# The deepest nesting accepted: a command is {"args": {"changes": {...}}} (3); 16 leaves
# room and keeps the bit stack a small int on the ESP32 (below 2**30).
MAX_DEPTH = 16


class JSONError(ValueError):
    """args[0]: the reason, which names a byte offset, never the bytes themselves."""
    pass


def _fail(i, what):
    raise JSONError("byte %d: %s" % (i, what))


def _ws(buf, i, n):
    # RFC 8259 section 2: only space, tab, line feed and carriage return.
    while i < n:
        c = buf[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            return i
        i += 1
    return i


def _hex4(buf, i, n):
    """The value of 4 hex digits at i, or -1."""
    if i + 4 > n:
        return -1
    v = 0
    for k in range(i, i + 4):
        c = buf[k]
        if 0x30 <= c <= 0x39:
            d = c - 0x30
        elif 0x41 <= c <= 0x46:
            d = c - 0x37
        elif 0x61 <= c <= 0x66:
            d = c - 0x57
        else:
            return -1
        v = (v << 4) | d
    return v


def _utf8(buf, i, n):
    """One multi-byte UTF-8 sequence starting at i (buf[i] >= 0x80); returns the index after
    it. RFC 3629 section 4: no overlong forms, no surrogates (ED A0..BF), nothing past
    U+10FFFF, no stray continuation byte, no truncated sequence."""
    c = buf[i]
    if 0xC2 <= c <= 0xDF:
        need = 1
        lo = 0x80
        hi = 0xBF
    elif 0xE0 <= c <= 0xEF:
        need = 2
        lo = 0xA0 if c == 0xE0 else 0x80
        hi = 0x9F if c == 0xED else 0xBF
    elif 0xF0 <= c <= 0xF4:
        need = 3
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
    else:
        _fail(i, "invalid UTF-8")
    if i + need >= n:
        _fail(i, "invalid UTF-8 (truncated)")
    c = buf[i + 1]
    if c < lo or c > hi:
        _fail(i, "invalid UTF-8")
    for k in range(i + 2, i + 1 + need):
        c = buf[k]
        if c < 0x80 or c > 0xBF:
            _fail(i, "invalid UTF-8")
    return i + 1 + need


def _string(buf, i, n):
    """The string whose opening quote is at i; returns the index after its closing quote."""
    i += 1
    while True:
        if i >= n:
            _fail(i, "unterminated string")
        c = buf[i]
        if c == 0x22:                       # "
            return i + 1
        if c == 0x5C:                       # backslash
            if i + 1 >= n:
                _fail(i, "unterminated string")
            e = buf[i + 1]
            if e == 0x75:                   # \uXXXX
                u = _hex4(buf, i + 2, n)
                if u < 0:
                    _fail(i, "bad \\u escape")
                if 0xDC00 <= u <= 0xDFFF:
                    _fail(i, "lone surrogate escape")
                if 0xD800 <= u <= 0xDBFF:
                    # Must be followed by the escape of its low half.
                    if i + 7 >= n or buf[i + 6] != 0x5C or buf[i + 7] != 0x75:
                        _fail(i, "lone surrogate escape")
                    u = _hex4(buf, i + 8, n)
                    if u < 0xDC00 or u > 0xDFFF:
                        _fail(i, "lone surrogate escape")
                    i += 6
                i += 6
            elif e in b'"\\/bfnrt':
                i += 2
            else:
                _fail(i, "bad escape")
        elif c < 0x20:
            _fail(i, "control character in string")
        elif c < 0x80:
            i += 1
        else:
            i = _utf8(buf, i, n)


def _digits(buf, i, n):
    """At least one digit at i; returns the index after the run."""
    if i >= n or not 0x30 <= buf[i] <= 0x39:
        _fail(i, "expected a digit")
    i += 1
    while i < n and 0x30 <= buf[i] <= 0x39:
        i += 1
    return i


def _number(buf, i, n):
    # RFC 8259 section 6: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
    if buf[i] == 0x2D:                      # -
        i += 1
    if i < n and buf[i] == 0x30:
        i += 1                              # a leading 0 stands alone: 01 fails after it
    else:
        i = _digits(buf, i, n)
    if i < n and buf[i] == 0x2E:            # .
        i = _digits(buf, i + 1, n)
    if i < n and (buf[i] == 0x65 or buf[i] == 0x45):   # e E
        i += 1
        if i < n and (buf[i] == 0x2B or buf[i] == 0x2D):
            i += 1
        i = _digits(buf, i, n)
    return i


def _literal(buf, i, n, word):
    for k in range(len(word)):
        if i + k >= n or buf[i + k] != word[k]:
            _fail(i, "invalid literal")
    return i + len(word)


def _key(buf, i, n):
    """A member name and its colon at i (whitespace before both skipped); returns the index
    of the value (whitespace skipped)."""
    if i >= n or buf[i] != 0x22:
        _fail(i, "expected a string key")
    i = _ws(buf, _string(buf, i, n), n)
    if i >= n or buf[i] != 0x3A:            # :
        _fail(i, "expected ':'")
    return _ws(buf, i + 1, n)


def validate(buf, max_depth=MAX_DEPTH):
    """Raise JSONError unless `buf` (bytes, bytearray or memoryview) is one RFC 8259 JSON
    text in UTF-8, nested at most `max_depth` deep (max_depth <= 29). Returns None."""
    n = len(buf)
    depth = 0
    stack = 0            # bit k: the container at depth k+1 is an object (1) or array (0)
    i = _ws(buf, 0, n)
    while True:
        # -- a value starts at i
        if i >= n:
            _fail(i, "expected a value")
        c = buf[i]
        if c == 0x7B or c == 0x5B:          # { [
            depth += 1
            if depth > max_depth:
                _fail(i, "nested deeper than %d" % max_depth)
            is_obj = 1 if c == 0x7B else 0
            stack = (stack << 1) | is_obj
            i = _ws(buf, i + 1, n)
            if i < n and buf[i] == (0x7D if is_obj else 0x5D):
                i += 1                      # {} or []: a complete value
                depth -= 1
                stack >>= 1
            elif is_obj:
                i = _key(buf, i, n)
                continue
            else:
                continue
        elif c == 0x22:
            i = _string(buf, i, n)
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _number(buf, i, n)
        elif c == 0x74:
            i = _literal(buf, i, n, b"true")
        elif c == 0x66:
            i = _literal(buf, i, n, b"false")
        elif c == 0x6E:
            i = _literal(buf, i, n, b"null")
        else:
            _fail(i, "expected a value")
        # -- after a complete value: a comma, a closer, or the end of the document
        while True:
            i = _ws(buf, i, n)
            if depth == 0:
                if i != n:
                    _fail(i, "data after the document")
                return None
            if i >= n:
                _fail(i, "unterminated array or object")
            c = buf[i]
            is_obj = stack & 1
            if c == 0x2C:                   # ,
                i = _ws(buf, i + 1, n)
                if is_obj:
                    i = _key(buf, i, n)
                break                       # the next value
            if c == (0x7D if is_obj else 0x5D):
                i += 1
                depth -= 1
                stack >>= 1
                continue
            _fail(i, "expected ',' or '%s'" % ("}" if is_obj else "]"))


def join_surrogates(buf):
    """`buf`, a document validate() accepted, with every escaped surrogate pair
    (\\ud83d\\ude00) written as the 4-byte UTF-8 of its character. Returns `buf` itself
    when it has none (the usual case: nothing allocated), else new bytes."""
    n = len(buf)
    out = None
    start = 0
    i = 0
    while i < n:
        if buf[i] != 0x5C:
            i += 1
            continue
        # In a validated document every backslash is inside a string and starts an escape.
        if buf[i + 1] != 0x75:
            i += 2
            continue
        hi = _hex4(buf, i + 2, n)
        if hi < 0xD800 or hi > 0xDBFF:
            i += 6
            continue
        cp = 0x10000 + ((hi - 0xD800) << 10) + (_hex4(buf, i + 8, n) - 0xDC00)
        if out is None:
            out = bytearray()
        out += buf[start:i]
        out.append(0xF0 | (cp >> 18))
        out.append(0x80 | ((cp >> 12) & 0x3F))
        out.append(0x80 | ((cp >> 6) & 0x3F))
        out.append(0x80 | (cp & 0x3F))
        i += 12
        start = i
    if out is None:
        return buf
    out += buf[start:]
    return bytes(out)
