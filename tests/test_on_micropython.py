"""The shared tests, golden vectors and heap checks, run inside the MicroPython unix port.

Each device result is its own pytest item, and a test the device did not run fails.
"""

import ast
from typing import Any

import pytest
from conftest import GOLDEN, load_golden
from upy_device import DEVICE_TESTS, SHARED, Device

# tests/shared/test_*_shared.py also run under CPython (pytest collects them directly);
# tests/device/test_*_device.py need MicroPython (firmware, heap locks) and run only there.
TEST_FILES = sorted([*SHARED.glob("test_*_shared.py"), *DEVICE_TESTS.glob("test_*_device.py")])


def _shared_cases() -> list[tuple[str, str]]:
    # Names come from the source, not an import: device test modules import MicroPython-only
    # modules that CPython cannot load.
    cases = []
    for path in TEST_FILES:
        tree = ast.parse(path.read_text())
        names = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
        cases += [(path.stem, name) for name in sorted(names)]
    return cases


_results: dict[str, Any] = {}


def _cached(device: Device, key: str, op: str, **fields: Any) -> Any:
    if key not in _results:
        _results[key] = device.request(op, **fields)
    return _results[key]


@pytest.mark.parametrize(("module", "name"), _shared_cases())
def test_shared_on_micropython(device: Device, module: str, name: str) -> None:
    results = _cached(device, module, "shared", module=module)
    assert name in results, "the device did not run %s.%s" % (module, name)
    assert results[name] is None, results[name]


GOLDEN_NAMES = [
    section + "/" + vector["name"]
    for section, vectors in load_golden().items()
    for vector in vectors
]


@pytest.mark.parametrize("vector", GOLDEN_NAMES)
def test_golden_on_micropython(device: Device, vector: str) -> None:
    results = _cached(device, "golden", "golden", path=str(GOLDEN))
    assert vector in results, "the device did not check %s" % vector
    assert results[vector] is None, results[vector]


HEAP_CHECKS = [
    "%s %s" % (check, message)
    for message in ("SET", "STATE")
    for check in ("encode", "decode", "plain encode", "plain decode")
] + ["fast path is viper"]


@pytest.mark.parametrize("check", HEAP_CHECKS)
def test_hot_path_allocates_nothing(device: Device, check: str) -> None:
    results = _cached(device, "heap", "heap")
    assert results.keys() == set(HEAP_CHECKS)
    assert results[check] is None, results[check]


def test_device_is_the_unix_port(device: Device) -> None:
    info = device.request("info")
    assert info["version"][:2] >= [1, 22]
    assert info["fast"] == "viper"
