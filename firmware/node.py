"""The node service: config, hardware, motion, links and safety wired together.

Tasks: the control loop (fixed period, motion tick), one task per link, telemetry, and the
safety loop (link-loss failsafe, watchdog). A missing or invalid config boots an unconfigured
node that still answers HELLO, PING, DISCOVER, CONFIG_GET/CONFIG_SET and REBOOT, over serial.
"""

import asyncio
import gc
import os
import sys
import time

from servomesh.firmware import VERSION, clock, links, watchdog
from servomesh.firmware.dispatch import Dispatcher
from servomesh.protocol import cbor, datagram, hmac_sha256, messages
from servomesh.protocol.compat import const

_SAFETY_PERIOD_MS = const(20)
_SPIN_US = const(400)  # the end of a control period slept in place
_WATCHDOG_MS = const(3000)
_REBOOT_FLUSH_MS = const(50)
_BOOT_COUNT_FILE = "boot_count"
_COUNTER_BITS = const(24)  # datagram counter = boot count << 24 | frames sent this boot
_LATE_BUCKET_SHIFT = const(6)  # loop lateness histogram: 64 us buckets
_LATE_BUCKETS = const(64)

# Indexes into Node.counters (messages.STATE_COUNTERS order) that the links feed.
_FRAMES_DROPPED = const(0)
_DATAGRAMS_MALFORMED = const(1)
_AUTH_FAILED = const(2)
_REPLAYED = const(3)
_FIXED_STATE_FIELDS = const(16)  # [STATE, seq, 6 node fields, 8 counters]
_CHANNEL_FIELDS = const(5)
DEPLOYED_FILE = "servomesh.deployed"  # the digest of the build deployed (host/deploy.py)
_DEPLOYED_MAX = const(64)


def _config():
    """The config module, loaded for boot, CONFIG_GET and CONFIG_SET only: resident, its code
    and strings would take more heap than the motion engine (see `_drop_config`)."""
    from servomesh.firmware import config

    return config


def _drop_config():
    # A module lives while sys.modules or its package names it.
    sys.modules.pop("servomesh.firmware.config", None)
    package = sys.modules.get("servomesh.firmware")
    if package is not None and "config" in package.__dict__:
        delattr(package, "config")


class Node:
    def __init__(self, settings, config_error, reset_cause, boot_count):
        # The public copy, secrets hidden: links keep the key; CONFIG_SET reads the file.
        self.config = _config().public(settings) if settings is not None else None
        self.config_error = config_error
        self.reset_cause = reset_cause
        self.boot_count = boot_count
        self.boot_id = int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF
        self.counters = [0] * len(messages.STATE_COUNTERS)
        self.servos = None
        self.motion = None
        self.period_us = 10000
        self._link_timeout_ms = settings["link_timeout_ms"] if settings else 0
        self._key = None
        self._wifi = None  # (ssid, password)
        if settings is not None:
            self._key = _config().key_bytes(settings)
            if "wifi" in settings:
                self._wifi = (settings["wifi"]["ssid"], settings["wifi"]["password"])
            self._start_hardware(settings)
        self.dispatcher = Dispatcher(self)
        self.serial = None
        self.udp = None
        self.wifi = None
        self._host_link = None
        self._host_ms = 0
        self._armed = False  # the failsafe arms at the first host request after boot
        self._reboot_at_ms = None
        self._telemetry_ms = 0
        self._telemetry_link = None
        self._state_seq = -1
        self._log_seq = -1
        self._booted_ms = time.ticks_ms()
        self._told_boot = False
        self._hardware_failing = False
        self._overrun_ms = 0
        self._state = [0] * messages.MAX_FIELDS
        self._state_buf = bytearray(8 + 5 * messages.MAX_FIELDS)
        self._late_max_us = 0
        self.late_histogram = [0] * _LATE_BUCKETS
        self._last_tick_ms = time.ticks_ms()

    def _start_hardware(self, settings):
        from servomesh.firmware import servos
        from servomesh.firmware.motion import Motion

        try:
            self.servos = servos.make_servos(settings)
        except (_config().ConfigError, OSError) as error:
            self.config_error = "hardware: %s" % error
            self.config = None
            return
        self.period_us = 1000000 // settings["control_hz"]
        self.motion = Motion(settings["channels"], self.servos, self.period_us)

    # -- what the dispatcher asks of the node ---------------------------------------------

    def now_us(self):
        return clock.now_us()

    def host_seen(self, link):
        self._host_ms = time.ticks_ms()
        self._host_link = link
        self._armed = True
        if not self._told_boot:
            self._told_boot = True
            cause = self.reset_cause
            index = messages.RESET_CAUSES.index(cause) if cause in messages.RESET_CAUSES else 5
            self.log(messages.LOG_INFO, messages.LOG_BOOT, index, self.boot_count)
        if self._telemetry_link is None and self.config and self.config["telemetry_ms"]:
            self._telemetry_ms = self.config["telemetry_ms"]  # the configured default stream
            self._telemetry_link = link
        motion = self.motion
        if motion is not None and motion.in_failsafe:
            motion.link_restored()
            self.log(messages.LOG_INFO, messages.LOG_LINK_RESTORED)

    def info(self):
        settings = self.config
        info = {
            "node_id": settings["node_id"] if settings else None,
            "protocol_version": messages.PROTOCOL_VERSION,
            "firmware": VERSION,
            "board": settings["board"] if settings else None,
            "channels": len(settings["channels"]) if settings else 0,
            "kinds": [k for k in range(messages.ACK) if messages.known(k)],
            "boot_id": self.boot_id,
            "boot_count": self.boot_count,
            "reset_cause": self.reset_cause,
            "configured": settings is not None,
            "uptime_ms": time.ticks_diff(time.ticks_ms(), self._booted_ms),
            "counters": self._counter_map(),
        }
        if settings:
            info["sender_id"] = settings["sender_id"]
        if self._key is not None:
            info["key_fingerprint"] = hmac_sha256.fingerprint(self._key)
        try:  # what `servomesh deploy` last put here, to skip a deploy that would change nothing
            with open(DEPLOYED_FILE) as f:
                info["deployed"] = f.read(_DEPLOYED_MAX)
        except OSError:
            pass
        gc.collect()
        info["heap_used_bytes"] = gc.mem_alloc()  # after a collection: what the node keeps
        if self.config_error:
            info["config_error"] = self.config_error
        if self.motion is not None:
            info["control_hz"] = settings["control_hz"]
            info["loop_late_us"] = self._lateness()
            info["segments_played"] = self.motion.segments_played
            info["segment_gap_max_us"] = self.motion.segment_gap_max_us
        return info

    def public_config(self):
        if not self.config:
            return {}
        wire = _config().to_wire(self.config)
        _drop_config()
        return wire

    def configure(self, new, link):
        """CONFIG_SET: validate, persist, reboot to apply. Secrets travel only over serial."""
        try:
            return self._configure(_config(), new, link)
        finally:
            _drop_config()

    def _configure(self, config, new, link):
        try:
            new = config.from_wire(new)
            current = config.load()[0] or {}  # the file: it holds the secrets to keep
            wifi = new.get("wifi")
            password = wifi.get("password") if isinstance(wifi, dict) else None
            sent_secret = new.get("key") not in (None, config.HIDDEN) or password not in (
                None,
                config.HIDDEN,
            )
            if sent_secret and link is not self.serial:
                self.log(messages.LOG_WARNING, messages.LOG_CONFIG_INVALID, 1)
                return messages.E_BAD_CONFIG  # secrets would cross the LAN in the clear
            # Absent or "<hidden>" secrets mean "keep the node's own".
            if new.get("key") in (None, config.HIDDEN):
                new["key"] = current.get("key")
            if isinstance(wifi, dict) and password in (None, config.HIDDEN):
                if "wifi" not in current:
                    return messages.E_BAD_CONFIG  # no password to keep: never guess "open"
                wifi = dict(wifi)
                wifi["password"] = current["wifi"]["password"]
                new["wifi"] = wifi
            checked = config.validate(new)
        except config.ConfigError as error:
            self.config_error = "CONFIG_SET refused: %s" % error
            self.log(messages.LOG_WARNING, messages.LOG_CONFIG_INVALID)
            return messages.E_BAD_CONFIG
        if current and checked == current:
            return 0  # nothing changes: no reboot (a host may re-push after every reboot)
        try:
            config.save(checked)
        except OSError:
            return messages.E_INTERNAL
        self.log(messages.LOG_INFO, messages.LOG_CONFIG_SAVED)
        self.reboot_in(200)
        return 0

    def rebooting(self):
        return self._reboot_at_ms is not None

    def reboot_in(self, delay_ms):
        self._reboot_at_ms = time.ticks_add(time.ticks_ms(), max(delay_ms, _REBOOT_FLUSH_MS))
        self.log(messages.LOG_INFO, messages.LOG_REBOOTING, delay_ms)

    def stop(self, mode, trace):
        self.motion.stop(mode, trace)
        self.log(messages.LOG_WARNING, messages.LOG_STOPPED, mode, trace)

    def clear(self, trace):
        self.motion.clear(trace)
        self.log(messages.LOG_INFO, messages.LOG_CLEARED)

    def telemetry(self, period_ms, target, link):
        if target == messages.LINK_SERIAL:
            link = self.serial
        elif target == messages.LINK_UDP:
            link = self.udp
        if link is None:
            return messages.E_BAD_FIELDS
        self._telemetry_ms = period_ms
        self._telemetry_link = link
        return 0

    # -- outgoing events -------------------------------------------------------------------

    def log(self, level, code, a=None, b=None):
        """Send a LOG record to the host over the link it last used (if any)."""
        link = self._host_link
        if link is None:
            return
        self._log_seq = (self._log_seq + 1) & 0x3FFFFFFF
        record = [messages.LOG, self._log_seq, level, code]
        if a is not None:
            record.append(a)
        if b is not None:
            record.append(b)
        body = cbor.dumps(record)
        link.send(body, len(body))

    def _counter_map(self):
        self._collect_link_counters()
        return {name: self.counters[i] for i, name in enumerate(messages.STATE_COUNTERS)}

    def _collect_link_counters(self):
        counters = self.counters
        if self.serial is not None:
            counters[_FRAMES_DROPPED] = self.serial.frames_dropped()
        if self.udp is not None:
            rejected = self.udp.receiver.rejected
            counters[_DATAGRAMS_MALFORMED] = rejected["malformed"] + rejected["version"]
            counters[_AUTH_FAILED] = (
                rejected["unsigned"] + rejected["unknown_key"] + rejected["bad_tag"]
            ) + rejected["peers"]
            counters[_REPLAYED] = rejected["replay"] + rejected["too_old"]

    def state(self):
        """Encode a STATE into the state buffer; return its length."""
        values = self._state
        motion = self.motion
        values[0] = messages.STATE
        self._state_seq = (self._state_seq + 1) & 0x3FFFFFFF
        values[1] = self._state_seq
        values[2] = clock.now_us()
        flags = 0
        if motion is None:
            flags = messages.STATE_UNCONFIGURED
        else:
            if motion.stopped:
                flags |= messages.STATE_STOPPED
            if motion.in_failsafe:
                flags |= messages.STATE_FAILSAFE
        values[3] = flags
        values[4] = motion.trace if motion is not None else 0
        values[5] = self.period_us
        values[6] = self._late_max_us
        self._late_max_us = 0
        values[7] = gc.mem_free()
        self._collect_link_counters()
        for i in range(len(self.counters)):
            values[8 + i] = self.counters[i]
        count = _FIXED_STATE_FIELDS
        if motion is not None:
            servos = self.servos
            for channel in range(len(motion.setpoint_us)):
                values[count] = channel
                values[count + 1] = motion.setpoint_us[channel]
                values[count + 2] = servos.position_us(channel)
                values[count + 3] = motion.target_us[channel]
                values[count + 4] = motion.flags(channel)
                count += _CHANNEL_FIELDS
        return cbor.encode_ints_into(self._state_buf, 0, values, count)

    def _lateness(self):
        total = sum(self.late_histogram)
        result = {"ticks": total}
        for name, share in (("p50", 50), ("p99", 99)):
            seen = 0
            for bucket in range(_LATE_BUCKETS):
                seen += self.late_histogram[bucket]
                if total and seen * 100 >= total * share:
                    result[name] = (bucket + 1) << _LATE_BUCKET_SHIFT  # upper bound
                    break
        return result

    # -- tasks -----------------------------------------------------------------------------

    async def control_loop(self):
        period_us = self.period_us
        motion = self.motion
        histogram = self.late_histogram
        deadline = clock.now_us()
        while True:
            deadline = clock.add_us(deadline, period_us)
            # asyncio sleeps in whole milliseconds and may wake most of one early; the links
            # keep running through those sleeps. Only the last few hundred microseconds are
            # slept in place, so a link waits at most that long.
            while True:
                wait_us = clock.diff_us(deadline, clock.now_us())
                if wait_us <= _SPIN_US:
                    if wait_us > 0:
                        time.sleep_us(wait_us)
                    break
                await asyncio.sleep_ms((wait_us - _SPIN_US) // 1000 if wait_us > 1400 else 1)
            now = clock.now_us()
            late_us = clock.diff_us(now, deadline)
            if late_us > period_us:
                deadline = now  # fell a whole period behind: skip, do not burst
                self._overrun(late_us)
            if late_us > self._late_max_us:
                self._late_max_us = late_us
            bucket = late_us >> _LATE_BUCKET_SHIFT
            histogram[bucket if bucket < _LATE_BUCKETS else _LATE_BUCKETS - 1] += 1
            now_ms = time.ticks_ms()
            # Checked every tick, so the failsafe acts within the timeout plus one period.
            if (
                self._armed
                and not motion.in_failsafe
                and time.ticks_diff(now_ms, self._host_ms) > self._link_timeout_ms
            ):
                self._link_lost(now_ms)
            try:
                motion.tick(now)
                self._hardware_failing = False
            except OSError:  # an I2C bus error on a PCA9685: keep ticking, say so once
                if not self._hardware_failing:
                    self._hardware_failing = True
                    self.log(messages.LOG_ERROR, messages.LOG_HARDWARE_ERROR)
            self._last_tick_ms = now_ms

    def _overrun(self, late_us):
        now_ms = time.ticks_ms()
        if time.ticks_diff(now_ms, self._overrun_ms) >= 1000:  # at most one record a second
            self._overrun_ms = now_ms
            self.log(messages.LOG_WARNING, messages.LOG_LOOP_OVERRUN, late_us)

    def _link_lost(self, now_ms):
        self.motion.failsafe()
        self.log(
            messages.LOG_WARNING, messages.LOG_LINK_LOST, time.ticks_diff(now_ms, self._host_ms)
        )

    async def telemetry_loop(self):
        while True:
            period_ms = self._telemetry_ms
            if not period_ms or self._telemetry_link is None:
                await asyncio.sleep_ms(50)
                continue
            size = self.state()
            self._telemetry_link.send(self._state_buf, size)
            await asyncio.sleep_ms(period_ms)

    async def safety_loop(self, dog):
        timeout_ms = self.config["link_timeout_ms"] if self.config else 0
        period_ms = self.period_us // 1000
        while True:
            await asyncio.sleep_ms(_SAFETY_PERIOD_MS)
            now_ms = time.ticks_ms()
            motion = self.motion
            if (
                motion is not None
                and self._armed
                and not motion.in_failsafe
                and time.ticks_diff(now_ms, self._host_ms) > timeout_ms
            ):
                motion.failsafe()
                self.log(
                    messages.LOG_WARNING,
                    messages.LOG_LINK_LOST,
                    time.ticks_diff(now_ms, self._host_ms),
                )
            if self._reboot_at_ms is not None and time.ticks_diff(now_ms, self._reboot_at_ms) >= 0:
                if motion is not None:
                    motion.stop(messages.STOP_HOLD)
                watchdog.reset()
            # Fed only while the control loop ticks and every link task runs.
            loop_ok = (
                motion is None or time.ticks_diff(now_ms, self._last_tick_ms) < 4 * period_ms + 100
            )
            links_ok = (self.serial is None or self.serial.alive or self.serial.closed) and (
                self.udp is None or self.udp.alive
            )
            if loop_ok and links_ok:
                dog.feed()

    async def run(self):
        settings = self.config
        if settings is None or settings["serial"]:
            self.serial = links.SerialLink(self)
        if settings is not None:
            key = self._key
            keys = {settings["key_id"]: key} if key else {}
            receiver = datagram.Receiver(
                keys, allow_unsigned=not key and settings["allow_unsigned"], boot_id=self.boot_id
            )
            sender = datagram.Sender(
                settings["sender_id"], key, settings["key_id"], self.boot_count << _COUNTER_BITS
            )
            self.udp = links.UdpLink(
                self, settings["udp_host"], settings["udp_port"], receiver, sender
            )
        if self._wifi is not None:
            from servomesh.firmware.wifi import Station

            self.wifi = Station(self._wifi[0], self._wifi[1], self.log)
        dog = watchdog.Watchdog(_WATCHDOG_MS)
        tasks = [
            asyncio.create_task(self.safety_loop(dog)),
            asyncio.create_task(self.telemetry_loop()),
        ]
        for link in (self.serial, self.udp):
            if link is not None:
                tasks.append(asyncio.create_task(link.run()))
        if self.wifi is not None:
            tasks.append(asyncio.create_task(self.wifi.run()))
        if self.motion is not None:
            tasks.append(asyncio.create_task(self.control_loop()))
        print(
            "servomesh node %s: %s, %s"
            % (
                settings["node_id"] if settings else "(unconfigured)",
                "udp port %d" % settings["udp_port"] if settings else "serial only",
                "reset cause %s" % self.reset_cause,
            )
        )
        await asyncio.gather(*tasks)


def _next_boot_count():
    try:
        with open(_BOOT_COUNT_FILE) as f:
            count = int(f.read()) + 1
    except (OSError, ValueError):
        count = 1
    with open(_BOOT_COUNT_FILE + ".tmp", "w") as f:
        f.write("%d\n" % count)
    os.rename(_BOOT_COUNT_FILE + ".tmp", _BOOT_COUNT_FILE)
    return count & ((1 << _COUNTER_BITS) - 1)


def main():
    settings, error = _config().load()
    node = Node(settings, error, watchdog.reset_cause(), _next_boot_count())
    del settings
    _drop_config()
    # Collect early and often: each datagram leaves some garbage, and on a small heap a full
    # one fragments until a 1 KiB receive buffer no longer fits.
    gc.collect()
    gc.threshold(gc.mem_free() // 4)
    if error:
        print("servomesh: unconfigured: %s" % error)
    try:
        asyncio.run(node.run())
    finally:
        asyncio.new_event_loop()  # a clean loop for the REPL after Ctrl-C
