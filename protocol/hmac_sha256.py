"""HMAC-SHA256 (RFC 2104) on `hashlib.sha256`: MicroPython has no `hmac` module."""

import hashlib

_BLOCK = 64


class HmacKey:
    """A key with its padded inner and outer blocks computed once."""

    def __init__(self, key):
        key = bytes(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key + bytes(_BLOCK - len(key))
        self._inner = bytes(b ^ 0x36 for b in key)
        self._outer = bytes(b ^ 0x5C for b in key)

    def __repr__(self):
        return "HmacKey(<hidden>)"  # keys never reach logs

    def digest(self, *parts):
        """HMAC-SHA256 over the concatenation of `parts`."""
        inner = hashlib.sha256(self._inner)
        for part in parts:
            inner.update(part)
        outer = hashlib.sha256(self._outer)
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, packet, end, boot=None):
        """Whether the bytes of `packet` from `end` on start the HMAC of `boot` (when given)
        and `packet[:end]`, hashed in place. Every byte is compared, whatever differs: no
        timing tells a forger how much of a tag was right."""
        signed = memoryview(packet)[:end]
        tag = self.digest(signed) if boot is None else self.digest(boot, signed)
        diff = 0
        for i in range(len(packet) - end):
            diff |= tag[i] ^ packet[end + i]
        return diff == 0


def fingerprint(key):
    """A key's public name, 16 hex digits: tells keys apart (deploy checks a node's against a
    key file) and reveals nothing of the key, being an HMAC under it."""
    import binascii  # only INFO and the host need it: not loaded at boot

    return binascii.hexlify(HmacKey(key).digest(b"servomesh key fingerprint")[:8]).decode()
