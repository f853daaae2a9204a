"""Run mypy on servomesh.protocol and servomesh.host under their import names.

The repository keeps protocol/ and host/ at the top (the layout shows the architecture), while
their import names are servomesh.protocol and servomesh.host; mypy cannot follow the editable
install's import hook, so it reads a link tree with the import-name layout instead.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".build" / "typecheck" / "servomesh"
PACKAGES = ("protocol", "host")


def main() -> int:
    TREE.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = TREE / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    for name in PACKAGES:
        command += ["-p", "servomesh." + name]
    return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
