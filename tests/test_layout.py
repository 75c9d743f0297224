"""The layout says what each module is: the Temporal activity classes
(activities/) apart from the PostgreSQL store (store/), the provider clients
(providers/) and what a message says (messages/), which the HTTP service
(web/) uses too, without importing an activity module. Read from the
source, so a layer reaching past its place fails here, not in production."""

from __future__ import annotations

from fnmatch import fnmatch

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What each package of the image may import of this repository (besides itself).
MAY_IMPORT = {
    "workflows": {"activities"},  # the activity classes, by reference, for execute_activity_method
    "messages": {"workflows"},
    "providers": set(),
    "store": {"providers", "workflows"},
    "activities": {"store", "providers", "messages", "workflows", "reports"},  # reports: the WOCAS report it builds and mails
    "web": {"store", "providers", "messages", "workflows", "codec", "worker"},
    "reports": {"store", "workflows"},
}


def packages() -> set[str]:
    """Every package of the image: a folder of Python with an __init__.py (not the tests' or the benchmark's)."""
    return {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}


def first_party_imports(source: Path) -> set[str]:
    """The top-level modules of this repository that `source` imports, at any depth of its code."""
    ours = packages() | {"worker"}
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & ours


def test_each_package_imports_only_the_layers_below_it():
    reaching = {}
    for package, allowed in MAY_IMPORT.items():
        files = sorted((REPO / package).rglob("*.py"))
        assert files, f"{package}/ has no modules"
        for source in files:
            beyond = first_party_imports(source) - allowed - {package}
            if beyond:
                reaching[str(source.relative_to(REPO))] = sorted(beyond)
    assert not reaching, f"modules importing past their layer: {reaching}"


def test_the_http_service_names_no_activity_module():
    """Not even in a comment: what web/ uses lives in store/, providers/ and messages/."""
    mentions = [
        f"{source.relative_to(REPO)}:{n}"
        for source in sorted((REPO / "web").rglob("*.py"))
        for n, line in enumerate(source.read_text().splitlines(), start=1)
        if re.search(r"\bactivities\b", line)
    ]
    assert not mentions


def test_every_package_is_installed_and_sent_to_the_image_build():
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == packages()
    shipped = {line.strip("!/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert packages() | {"worker.py", "pyproject.toml", "README.md"} == shipped


def test_the_migrations_are_package_data_of_the_store():
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["store"] == ["migrations/*.sql"]
    migrations = sorted(p.name for p in (REPO / "store" / "migrations").glob("*.sql"))
    # schema_migrations keys on the file name: a renamed migration would be applied again.
    assert migrations[0] == "001_init.sql" and len(migrations) >= 13


def test_the_codecs_deflate_dictionaries_are_package_data():
    """An installed worker (the Docker image) without them could open no payload it compressed."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"].get("codec", [])
    dictionaries = [p.name for p in (REPO / "codec").glob("deflate-dictionary-*.bin")]
    assert dictionaries and all(any(fnmatch(name, pattern) for pattern in patterns) for name in dictionaries)
