"""Errors the application layer raises for what a user got wrong; the CLI maps them to exit codes."""

from __future__ import annotations


class ConfigError(ValueError):
    """Configuration that cannot work; the message names the setting and how to fix it."""


class UsageError(ValueError):
    """A request that does not make sense (flags together, an unknown id or kind)."""


class CatalogMismatch(ValueError):
    """The catalog cannot feed this store as it is (its ids are of another type than the
    store's cursor and ids): resuming would compare the two. Nothing was written."""
