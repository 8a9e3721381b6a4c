"""One home for each shared name: defined once in the whole project, imported everywhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sharding", "modal_workers", "application", "tasks", "flows", "deployments")
PACKAGES += ("faiss_builder", "bench")

# name -> the module that is its home. ProductId has a second spelling in sharding.codec: the two
# libraries may not import each other (docs/architecture.md), and everything above uses this one.
HOMES = {
    "KINDS": "modal_workers/types.py",
    "ALL_KINDS": "application/settings.py",
    "DEFAULT_CLIP_MODEL": "modal_workers/embedder.py",
    "APP_NAME": "modal_workers/names.py",
    "CLS_NAME": "modal_workers/names.py",
    "FailedProduct": "modal_workers/types.py",
}


def definitions(name: str) -> list[str]:
    pattern = re.compile(rf"^(?:{name}\b\s*(?::[^=]*)?=|class {name}\b)", re.MULTILINE)
    return sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    )


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_shared_name_is_defined_once(name: str) -> None:
    assert definitions(name) == [HOMES[name]]


def test_the_kinds_list_is_not_spelled_out_again() -> None:
    spelled = re.compile(r"\(\s*\"color\",\s*\"structure\",\s*\"combined\"\s*\)")
    places = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if spelled.search(path.read_text(encoding="utf-8"))
    )
    assert places == ["modal_workers/types.py"]


def test_the_shared_names_are_the_same_objects_where_re_exported() -> None:
    from application import settings
    from modal_workers import app, embedder, embedders, names, remote, types

    assert embedders.DEFAULT_CLIP_MODEL is embedder.DEFAULT_CLIP_MODEL
    assert app.APP_NAME is remote.APP_NAME is names.APP_NAME
    assert settings.ALL_KINDS is types.KINDS
