"""Contactor coil output and its mirror (auxiliary) contact.

The mirror contact is the only way to see a welded main contact (IEC 61851-1 requires
opening to be effective; IEC 60947-4-1 Annex F defines mirror contacts for this). Without
one, `mirror_closed()` echoes the command, which disables welded-contact detection.
"""


class Contactor:
    def __init__(self, coil, active_high=True, mirror=None, mirror_closed_high=False):
        self._coil = coil
        self._on = 1 if active_high else 0
        self._off = 0 if active_high else 1
        self._mirror = mirror
        self._mirror_closed = 1 if mirror_closed_high else 0
        self.closed = False
        coil.value(self._off)

    @property
    def has_mirror(self):
        return self._mirror is not None

    def set(self, closed):
        """[tick] Energise (True) or release (False) the coil."""
        self._coil.value(self._on if closed else self._off)
        self.closed = bool(closed)

    def mirror_closed(self):
        """[tick] What the mirror contact reports, or the command without a mirror."""
        if self._mirror is None:
            return self.closed
        return self._mirror.value() == self._mirror_closed
