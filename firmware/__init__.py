"""Node firmware (MicroPython only): the servo service each board runs."""

VERSION = "0.1.0"
