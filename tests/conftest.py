import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from upy_device import Device

# MicroPython-only test modules: tests/test_on_micropython.py runs them inside the unix port.
collect_ignore_glob = ["device/*"]

GOLDEN = Path(__file__).resolve().parent / "vectors" / "golden.json"


def load_golden() -> dict[str, list[dict[str, Any]]]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def device() -> Iterator[Device]:
    """The MicroPython unix port running the test service, shared by the whole session."""
    node = Device()
    yield node
    node.close()


@pytest.fixture(scope="session")
def small_device() -> Iterator[Device]:
    """The same service on a 64 KiB heap, like a small board, loading .mpy as a deploy does."""
    node = Device(heap="64k", compiled=True)
    yield node
    node.close()
