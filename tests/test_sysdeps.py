"""make test's Debian packages: present ones are left alone, a missing one is installed as root
or named, with the command to run, in one line by anyone else (before pytest starts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline import sysdeps
from pipeline.config import PROJECT_ROOT

ABSENT = "linreg-no-such-package"


def test_installed_packages_are_not_missing() -> None:
    # what make test just needed: the integration tests below this suite use all three
    assert sysdeps.missing(["postgresql", "chromium", "chromium-driver"]) == []
    assert sysdeps.missing([ABSENT]) == [ABSENT]


def test_a_user_who_is_not_root_gets_one_line_naming_the_command() -> None:
    with pytest.raises(sysdeps.MissingPackages) as err:
        sysdeps.ensure(["postgresql", ABSENT], uid=1000)
    message = str(err.value)
    assert "\n" not in message and ABSENT in message and "postgresql" not in message
    assert f"apt-get install -y {ABSENT}" in message


def test_make_test_deps_as_another_user_stops_with_one_line() -> None:
    """The command line make test runs first, as a user that is not root: exit 1, one line."""
    command = ["python3", "-m", "pipeline.sysdeps", "chromium", ABSENT]
    cwd = PROJECT_ROOT
    if os.geteuid() == 0:  # as root, run it as `nobody`: the path a student's account takes
        command = ["runuser", "-u", "nobody", "--", *command]
        # the module (standard library only) where `nobody` can read it: a clone may sit
        # under a directory only root can enter
        # under a directory only root can enter (not pytest's tmp dirs: they are 0700)
        cwd = Path(tempfile.mkdtemp(prefix="linreg-sysdeps-"))
        try:
            (cwd / "pipeline").mkdir()
            for name in ("__init__.py", "sysdeps.py"):
                shutil.copy(PROJECT_ROOT / "pipeline" / name, cwd / "pipeline" / name)
            for path in (cwd, *cwd.rglob("*")):
                path.chmod(path.stat().st_mode | 0o005)  # what `nobody` needs: read and enter
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        finally:
            shutil.rmtree(cwd)
    else:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: missing Debian packages: "), lines
    assert ABSENT in lines[0] and "chromium " not in lines[0].split(";")[0] + " "
