"""Node firmware (MicroPython only). Populated by the firmware issue."""
