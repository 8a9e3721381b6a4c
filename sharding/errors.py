"""Typed errors of the sharded store: storage failures, state problems, leases, injected crashes."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure; `transient` says whether a retry may succeed."""

    transient: bool = False


class ObjectNotFound(StorageError):
    """The named object does not exist."""


class ObjectExists(StorageError):
    """A create-only write found the object already there."""


class ObjectTooLarge(StorageError):
    """The backend refused the object as too large (HTTP 413 in any shape)."""


class StorageAuthError(StorageError):
    """The backend refused our credentials (401/403); retrying cannot help."""


class StorageUnavailable(StorageError):
    """5xx answers, timeouts or connection resets that outlasted every retry."""

    transient = True


class StateError(Exception):
    """The committed store state is corrupted or inconsistent; the message names the object."""


class ResumeRefused(StateError):
    """The store was built with another embedder, model, dimension or shard limits."""


class LeaseHeld(Exception):
    """Another run holds the store's lease; the message says who and until when."""


class LeaseLost(Exception):
    """Our lease expired or was taken over: this run must not commit."""


class InjectedCrash(Exception):
    """Raised by the writer's crash hook so tests can kill a commit at any write."""


class ProductIdRefused(ValueError):
    """A product id the store cannot keep exactly (an int outside int64/uint64, a bool, ...)."""


class BucketNotFound(StorageError):
    """Supabase answered "Bucket not found": the bucket is missing, or the key was not accepted.

    Supabase Storage answers a download or info request whose token is bad, expired, missing or
    only anonymous exactly as it answers one for a bucket that does not exist, so this never
    means "the object is missing": a store that cannot be read is never reported as empty.
    """


class FenceExpired(StorageUnavailable):
    """A write was not started (or not retried) because it could land after the time until
    which our lease is certainly ours; nothing was written by that attempt."""


class StoreConfigError(ValueError):
    """A store or lease setting that cannot work (a TTL below the minimum, a TTL shorter than
    the storage's request timeout); the message names the setting."""
