"""Joins the configured Wi-Fi network and stays joined (boards with a `network` module).

The UDP link binds before the network is up and serves as soon as it is; a lost connection
is retried with a capped backoff. The password is never printed or logged.
"""

import asyncio

from servomesh.protocol import messages
from servomesh.protocol.compat import const

_CHECK_MS = const(1000)
_BACKOFF_MAX_MS = const(30000)
_CONNECT_WAIT_MS = const(15000)

try:
    import network
except ImportError:  # the unix port: the host's own network serves the simulated nodes
    network = None


class Station:
    """Keeps one station interface connected; `network_module` is injectable for tests."""

    def __init__(self, ssid, password, log, network_module=None):
        module = network_module if network_module is not None else network
        self.available = module is not None
        self._ssid = ssid
        self._password = password
        self._log = log
        self.connected = False
        self.attempts = 0
        self._wlan = module.WLAN(module.STA_IF) if self.available else None

    def __repr__(self):
        return "Station(%r, <hidden>)" % self._ssid

    async def run(self):
        if not self.available:
            return
        wlan = self._wlan
        wlan.active(True)
        backoff_ms = _CHECK_MS
        while True:
            if wlan.isconnected():
                if not self.connected:
                    self.connected = True
                    backoff_ms = _CHECK_MS
                    self._log(messages.LOG_INFO, messages.LOG_WIFI, 1, self.attempts)
                await asyncio.sleep_ms(_CHECK_MS)
                continue
            if self.connected:
                self.connected = False
                self._log(messages.LOG_WARNING, messages.LOG_WIFI, 0, self.attempts)
            self.attempts += 1
            try:
                wlan.connect(self._ssid, self._password)
            except OSError:
                pass  # the radio is busy with a previous attempt: wait and check again
            waited_ms = 0
            while not wlan.isconnected() and waited_ms < _CONNECT_WAIT_MS:
                await asyncio.sleep_ms(100)
                waited_ms += 100
            if not wlan.isconnected():
                await asyncio.sleep_ms(backoff_ms)
                backoff_ms = min(backoff_ms * 2, _BACKOFF_MAX_MS)
