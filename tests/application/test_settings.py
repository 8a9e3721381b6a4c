"""Settings: env names, overrides, kinds parsing, and the key kept secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from application.settings import load_settings, parse_kinds


def test_env_then_explicit_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAISS_BUILDER_STORE", "/env/store")
    monkeypatch.setenv("FAISS_BUILDER_BATCH_SIZE", "64")
    monkeypatch.setenv("FAISS_BUILDER_KINDS", "structure,color")
    settings = load_settings(batch_size=None, store="/cli/store")
    assert settings.store.store == "/cli/store"
    assert settings.embed.batch_size == 64
    assert settings.embed.kinds == ("color", "structure")


def test_supabase_key_never_appears_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_KEY", "sb-secret-canary-123")
    settings = load_settings()
    assert settings.supabase.key is not None
    assert settings.supabase.key.get_secret_value() == "sb-secret-canary-123"
    assert "canary" not in repr(settings.supabase) and "canary" not in str(settings.supabase)


def test_unknown_kind_and_bad_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        parse_kinds("color,shape")
    with pytest.raises(ValidationError, match="batch_size"):
        load_settings(batch_size=0)
    with pytest.raises(ValidationError, match="backend"):
        load_settings(backend="gpu-cloud")
