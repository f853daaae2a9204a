"""Wi-Fi station logic with a fake network module, inside the MicroPython unix port."""

import asyncio

from servomesh.firmware.wifi import Station
from servomesh.protocol import messages


class FakeWlan:
    def __init__(self, joins_after):
        self.joins_after = joins_after  # connect() calls before the network accepts
        self.calls = []
        self.up = False
        self.active_state = False

    def active(self, state):
        self.active_state = state

    def connect(self, ssid, password):
        self.calls.append((ssid, password))
        if len(self.calls) >= self.joins_after:
            self.up = True

    def isconnected(self):
        return self.up


class FakeNetwork:
    STA_IF = 0

    def __init__(self, wlan):
        self.wlan = wlan

    def WLAN(self, interface):
        return self.wlan


def _run_for(station, ms):
    async def main():
        task = asyncio.create_task(station.run())
        await asyncio.sleep_ms(ms)
        task.cancel()

    asyncio.run(main())


def test_joins_and_logs_without_the_password():
    wlan = FakeWlan(joins_after=1)
    logs = []
    station = Station("lab", "s3cret-pass", lambda *record: logs.append(record), FakeNetwork(wlan))
    _run_for(station, 300)
    assert wlan.active_state is True
    assert wlan.calls == [("lab", "s3cret-pass")]
    assert station.connected
    assert logs == [(messages.LOG_INFO, messages.LOG_WIFI, 1, 1)]
    assert "s3cret" not in repr(station)


def test_reconnects_after_a_loss():
    wlan = FakeWlan(joins_after=1)
    logs = []
    station = Station("lab", "s3cret-pass", lambda *record: logs.append(record), FakeNetwork(wlan))

    async def main():
        task = asyncio.create_task(station.run())
        await asyncio.sleep_ms(100)
        wlan.up = False  # the access point went away
        await asyncio.sleep_ms(1300)
        task.cancel()

    asyncio.run(main())
    assert len(wlan.calls) == 2
    assert [record[2] for record in logs] == [1, 0, 1]


def test_without_a_network_module_the_station_does_nothing():
    # The unix port has no `network` module: simulated nodes use the host's network.
    logs = []
    station = Station("lab", "s3cret-pass", lambda *record: logs.append(record))
    assert station.available is False
    _run_for(station, 10)
    assert station.connected is False
    assert logs == []
