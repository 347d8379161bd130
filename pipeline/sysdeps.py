"""``python3 -m pipeline.sysdeps PACKAGE...``: the Debian packages a target needs, installed
when missing (as root) or named in one line with the command to run (otherwise).

Standard library only: ``make test`` runs it with the system's ``python3`` before pytest, and
``make server`` through :func:`pipeline.server.ensure_postgres_installed`. A package counts as
present when the files the project uses from it exist (Debian keeps PostgreSQL's binaries off
PATH), so a machine with the programs from elsewhere is not sent to apt-get.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _postgres_present() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or bool(shutil.which("initdb"))


# package -> how to tell it is installed (the files the tests and targets run)
PROBES: dict[str, Callable[[], bool]] = {
    "postgresql": _postgres_present,
    "chromium": lambda: Path("/usr/bin/chromium").exists(),
    "chromium-driver": lambda: Path("/usr/bin/chromedriver").exists(),
}


class MissingPackages(RuntimeError):
    """Packages are missing and this user cannot install them: the message is one line."""


def missing(packages: Sequence[str]) -> list[str]:
    """The packages whose files are not on this machine (an unknown name: by dpkg's record)."""
    out = []
    for name in packages:
        probe = PROBES.get(name)
        present = probe() if probe else _dpkg_installed(name)
        if not present:
            out.append(name)
    return out


def _dpkg_installed(name: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    query = ["dpkg-query", "-W", "-f=${Status}", name]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.endswith("install ok installed")


def ensure(packages: Sequence[str], uid: int | None = None) -> list[str]:
    """Install the missing ``packages`` with apt-get (``apt-get update`` once first) when root;
    otherwise raise :class:`MissingPackages` naming them and the command. Returns what was
    installed (nothing when all were present)."""
    need = missing(packages)
    if not need:
        return []
    uid = os.geteuid() if uid is None else uid
    command = f"sudo apt-get update && sudo apt-get install -y {' '.join(need)}"
    if uid != 0 or not shutil.which("apt-get"):
        raise MissingPackages(f"missing Debian packages: {' '.join(need)}; run: {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing Debian packages: {' '.join(need)} (apt-get)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *need],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    still = missing(need)
    if still:
        raise MissingPackages(f"apt-get installed {' '.join(need)} but {' '.join(still)} is absent")
    return need


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", help="Debian package names")
    args = parser.parse_args(argv)
    try:
        ensure(args.packages)
    except MissingPackages as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(
            f"error: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode})", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
