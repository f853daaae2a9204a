"""The one place that bridges MicroPython-only names to CPython.

MicroPython's compiler folds `_NAME = const(value)` at compile time whatever module `const`
comes from; CPython only needs a function of the same name.
"""

try:
    from micropython import const  # type: ignore[import-not-found, unused-ignore]
except ImportError:

    def const(value):
        return value


__all__ = ["const"]
