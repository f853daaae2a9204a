"""Assertion helpers for tests that run under both CPython (pytest) and MicroPython."""


def raises(error_type, function, *args):
    """Call `function(*args)`; return the `error_type` it raised, or fail."""
    try:
        function(*args)
    except error_type as error:
        return error
    raise AssertionError("%s not raised by %s%r" % (error_type.__name__, function, args))
