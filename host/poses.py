"""Poses saved at run time (through the API), kept beside the operation log.

The fleet config's poses are the user's file and stay as written: a saved pose may not take
one of their names. Saved poses live in `<data_dir>/poses.json` and join the fleet's poses at
start, so `Fleet.pose(name)` goes to either kind.
"""

import json
import math
import os
from pathlib import Path
from typing import Final

from servomesh.host.fleet import Fleet, FleetError, UnknownNameError

FILE_NAME: Final = "poses.json"
MAX_POSES: Final = 1000


class PoseConflictError(FleetError):
    """A pose of the fleet config cannot be changed or deleted at run time."""


class PoseBook:
    """The fleet's poses: those of its config (fixed) and those saved here."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.path = Path(fleet.config.host.data_dir) / FILE_NAME
        self.fixed = frozenset(fleet.config.poses)
        self.saved: dict[str, dict[str, float]] = {}
        for name, joints in self._read().items():
            if name in self.fixed:
                continue  # the config took the name since: the file's version yields
            try:
                self._check(name, joints)
            except FleetError:
                continue  # a joint renamed or narrowed in the config since: unusable now
            self.saved[name] = joints
            fleet.config.poses[name] = joints

    def all(self) -> dict[str, tuple[dict[str, float], bool]]:
        """name -> (joint angles, saved here)."""
        return {
            name: (dict(joints), name not in self.fixed)
            for name, joints in sorted(self.fleet.config.poses.items())
        }

    def save(self, name: str, joints: dict[str, float]) -> None:
        """Save (or replace) pose `name`; FleetError subclasses say what is wrong."""
        if name in self.fixed:
            raise PoseConflictError("pose %r is in the fleet config: edit the file" % name)
        self._check(name, joints)
        if name not in self.saved and len(self.saved) >= MAX_POSES:
            raise FleetError("%d poses are saved already: delete some first" % MAX_POSES)
        self.saved[name] = dict(joints)
        self.fleet.config.poses[name] = dict(joints)
        self._write()

    def delete(self, name: str) -> None:
        if name in self.fixed:
            raise PoseConflictError("pose %r is in the fleet config: edit the file" % name)
        if name not in self.saved:
            raise UnknownNameError("no pose named %r" % name)
        del self.saved[name]
        del self.fleet.config.poses[name]
        self._write()

    def _check(self, name: str, joints: dict[str, float]) -> None:
        if not joints:
            raise FleetError("pose %r: give at least one joint" % name)
        for value in joints.values():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise FleetError("pose %r: angles must be finite numbers" % name)
        self.fleet.pulses(joints)  # unknown joints and limits, as a move would refuse them

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: start empty rather than refuse to serve; the file stays
        if not isinstance(data, dict):
            return {}
        return {
            str(name): {str(j): float(v) for j, v in joints.items()}
            for name, joints in data.items()
            if isinstance(joints, dict)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in joints.values())
        }

    def _write(self) -> None:
        # Write then rename: a crash leaves the old file or the new one, never half of one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.saved, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self.path)
