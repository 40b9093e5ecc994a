"""The owner's signature on a command: HMAC-SHA256 (RFC 2104) with a key provisioned at
commissioning (config `owner_key`, 64 hex digits = 32 bytes).

MicroPython has hashlib.sha256 but no hmac module, so HMAC is built here (a few lines).
What is signed, and why the signature is the last member of the command (docs/mqtt.md,
"Settings only the owner may change"): the exact bytes the backend published, so no
canonical JSON is needed on either side.

    signed = <station_id UTF-8> + b"\\n" + payload[:-SIG_TAIL]
    payload = <command JSON without its closing brace> + ',"sig":"<64 hex>"}'
"""
import hashlib
import binascii

_BLOCK = 64
SIG_HEX = 64
_SIG_HEAD = b',"sig":"'
SIG_TAIL = len(_SIG_HEAD) + SIG_HEX + 2     # ,"sig":"<64 hex>"}


def hmac_sha256(key, msg):
    """HMAC-SHA256 of bytes `msg` under bytes `key` (RFC 2104, B = 64)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def key_bytes(hex_key):
    """The provisioned key (64 hex digits) as bytes; None when none is provisioned."""
    if not hex_key:
        return None
    try:
        return binascii.unhexlify(hex_key)
    except ValueError:
        return None


def signed_part(payload):
    """(the bytes the signature covers, the signature as hex bytes), or None when the
    payload does not end with a signature member in the documented form."""
    n = len(payload)
    if n <= SIG_TAIL or payload[n - 2:] != b'"}':
        return None
    head = n - SIG_TAIL
    if payload[head:head + len(_SIG_HEAD)] != _SIG_HEAD:
        return None
    return payload[:head], payload[head + len(_SIG_HEAD):n - 2]


def _equal(a, b):
    # Constant time: every byte is compared whatever the first difference.
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def verify(payload, station_id, key):
    """True when `payload` (bytes) carries a valid signature of `station_id` under `key`."""
    part = signed_part(payload)
    if part is None or key is None:
        return False
    body, sig = part
    want = binascii.hexlify(hmac_sha256(key, station_id.encode() + b"\n" + body))
    return _equal(want, bytes(sig).lower())


def sign(payload, station_id, key):
    """`payload` (a command's JSON bytes, ending with '}') with the owner's signature
    appended as its last member. For the backend and the tests; the station only verifies."""
    body = payload.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("a JSON object expected")
    body = body[:-1]
    sig = binascii.hexlify(hmac_sha256(key, station_id.encode() + b"\n" + body))
    return body + _SIG_HEAD + sig + b'"}'
