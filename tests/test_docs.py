"""docs/architecture.md's module table names every module of the package and the benchmarks.

A module missing from the table is a module a newcomer cannot place; this keeps the table
from drifting as modules are added (empty package `__init__.py` files are exempt).
"""

from __future__ import annotations

import re

from conftest import REPO


def test_every_module_is_in_the_architecture_table():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", text, flags=re.MULTILINE))
    modules = {
        path.relative_to(REPO).as_posix()
        for folder in ("pipeline", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if path.stat().st_size > 0
    }
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md's table"
    assert sorted(listed - modules) == [], "the table names modules that do not exist"
