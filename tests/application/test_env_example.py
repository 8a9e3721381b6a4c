"""Every setting is documented in .env.example and README.md, under its real variable name."""

from __future__ import annotations

import re
from pathlib import Path

from application.settings import (
    CatalogSettings,
    EmbedSettings,
    FetchSettings,
    ModalSettings,
    StoreSettings,
    SupabaseSettings,
)

REPO = Path(__file__).resolve().parents[2]


def _variables() -> set[str]:
    names = set()
    for model in (
        StoreSettings,
        CatalogSettings,
        EmbedSettings,
        FetchSettings,
        SupabaseSettings,
        ModalSettings,
    ):
        prefix = model.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in model.model_fields}
    return names - {"FAISS_BUILDER_CRASH_AFTER_WRITES"}  # a testing hook, not a user setting


def test_env_example_and_readme_name_every_setting() -> None:
    example = (REPO / ".env.example").read_text()
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"\b(?:FAISS_BUILDER|SUPABASE)_[A-Z0-9_]+", example))
    missing_example = _variables() - documented
    missing_readme = {name for name in _variables() if name not in readme}
    assert not missing_example, f".env.example lacks {sorted(missing_example)}"
    assert not missing_readme, f"README.md lacks {sorted(missing_readme)}"
