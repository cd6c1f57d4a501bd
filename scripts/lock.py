"""Write (or compare against) the lock of exact versions the test suite passed with.

    .venv/bin/python scripts/lock.py > requirements-lock.txt     # after the suite passed in .venv
    .venv-latest/bin/python scripts/lock.py --compare requirements-lock.txt   # what differs from the lock

The lock holds diffpali[dev]'s whole dependency closure as installed in the running environment
(markers evaluated for this platform), nothing else: tools that happen to share the venv are left out.
Local build tags are dropped (``torch==2.13.0``, not ``2.13.0+cpu``), so the same line pins the CPU
build or the CUDA build, whichever scripts/setup.sh chose for the machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "diffpali"
EXTRAS = ("dev",)


def _public(version: str) -> str:
    return Version(version).public  # 2.13.0+cpu -> 2.13.0


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{name: version}`` of every installed distribution ``project[extras]`` needs, transitively."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(canonicalize_name(project), frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = installed.get(name)
        if dist is None:
            raise SystemExit(f"lock: {name} is required but not installed in {sys.prefix}")
        if name != canonicalize_name(project):
            found[dist.metadata["Name"]] = _public(dist.version)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None:
                # a requirement holds if its marker is true with no extra or with any extra asked for
                if not any(req.marker.evaluate({**default_environment(), "extra": e}) for e in ("", *wanted)):
                    continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="print the installed versions that differ from this lock")
    args = parser.parse_args()
    pins = closure()
    if args.compare:
        locked = read_lock(args.compare)
        changed = [(n, locked.get(canonicalize_name(n)), v) for n, v in pins.items()
                   if locked.get(canonicalize_name(n)) != v]
        print(f"versions in {sys.prefix} (Python {platform.python_version()}) that differ from {args.compare.name}:")
        for name, old, new in changed:
            print(f"  {name:28s} {old or '(not in the lock)':>14s} -> {new}")
        if not changed:
            print("  none: identical to the lock")
        return
    py = ".".join(platform.python_version_tuple()[:2])
    print("# Exact versions the test suite passed with; scripts/setup.sh installs them (pip -c) by default.")
    print(f"# Made on {platform.system()} {platform.machine()}, Python {py}, with scripts/lock.py (see docs/setup.md,")
    print("# 'Tested versions'). torch has no local tag: the CPU or the CUDA build of the same version.")
    print(f"# python {py}")
    for name, version in pins.items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
