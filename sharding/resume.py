"""Resuming a store: may this run build on the committed state, and what no commit names.

Opening a store for a build verifies what the run builds on, not the whole store: the
settings (check_resume), the committed state's own consistency from progress.json alone
(consistency_problems), that progress.json was not put back from an older copy
(check_not_rolled_back), and, per kind the run writes to, the open shard (in the writer) and
the manifest segments and sealed id maps that `finish` rebuilds the full id map from
(verify_sealed_id_maps). Sealed vector files and failure chunks are immutable and not read
(a retry reads the chunks it rewrites); the full audit of every object is `check`
(sharding.checks). See docs/store-format.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from sharding import names
from sharding.codec import ProductId, decode_ids, sha256_hex
from sharding.config import BuildConfig
from sharding.errors import ObjectNotFound, ResumeRefused, StateError
from sharding.progress import KindProgress, LastCommit, Progress, ShardRecord
from sharding.state import get_verified, shard_records
from sharding.storage import Storage

NOTHING_WRITTEN = "nothing was written (`faiss-builder check` reports every problem)"


def check_resume(progress: Progress, config: BuildConfig, where: str) -> None:
    """Refuse to build on this commit: ResumeRefused naming each setting that differs (no mixing
    of vector spaces), StateError when the commit contradicts itself. Reads nothing."""
    diffs = resume_differences(progress, config)
    if diffs:
        raise ResumeRefused(
            f"refusing to resume {where}: it was built with "
            + "; ".join(diffs)
            + ". Use a new store, or run with the settings it was built with."
        )
    problems = consistency_problems(progress)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StateError(f"refusing to resume {where}: {problems[0]}{more}; {NOTHING_WRITTEN}")


def resume_differences(progress: Progress, config: BuildConfig) -> list[str]:
    """The settings this run would change, each as 'name old (this run: new)'.

    The model: digests decide when both the store and the run have one (the path may be spelled
    differently); otherwise the model strings must agree (a store without a digest then records
    the run's at its next commit). shard_max_bytes may shrink (it applies from the open shard
    on, so a bucket's file size limit can be met without a new store) but not grow: the limit
    a store records is what its shards were sized for, so a larger one is refused like any
    other change of the shard limits.
    """
    wanted: dict[str, tuple[object, object]] = {"embedder": (progress.embedder, config.embedder)}
    model_diff = []
    if progress.model_digest is not None and config.model_digest is not None:
        if progress.model_digest != config.model_digest:
            model_diff.append(
                f"model {progress.model!r} of weights {progress.model_digest} (this run: "
                f"{config.model!r} of weights {config.model_digest})"
            )
    else:
        wanted["model"] = (progress.model, config.model)
    wanted["shard_max_vectors"] = (progress.shard_max_vectors, config.shard_max_vectors)
    for kind, dim in config.dims.items():
        if kind in progress.kinds:
            wanted[f"{kind} dimension"] = (progress.kinds[kind].dim, dim)
    diffs = [
        f"{key} {old!r} (this run: {new!r})" for key, (old, new) in wanted.items() if old != new
    ]
    diffs[1:1] = model_diff  # after the embedder, as the settings read
    if config.shard_max_bytes > progress.shard_max_bytes:
        diffs.append(
            f"shard_max_bytes {progress.shard_max_bytes!r} (this run: {config.shard_max_bytes!r}; "
            "a smaller limit is accepted, a larger one is not)"
        )
    return diffs


def consistency_problems(progress: Progress) -> list[str]:
    """What in progress.json contradicts itself, from progress.json alone (reads nothing).

    Per kind: shard numbering and names, only the last shard open, vector counts against
    total_vectors and vectors_per_brand, ids above the cursor (max_id), and the failure totals.
    """
    problems: list[str] = []
    for kind, kp in progress.kinds.items():
        problems += [f"{kind}: {p}" for p in _kind_problems(kind, kp)]
    log = progress.failures
    listed = sum(ref.count for ref in log.chunks) + len(log.recent)
    if listed != log.total:
        problems.append(f"failures: {listed} recorded in chunks and inline, total says {log.total}")
    return problems


def _kind_problems(kind: str, kp: KindProgress) -> list[str]:
    problems: list[str] = []
    expected = 1
    for ref in kp.segments:
        if ref.first_shard != expected or ref.last_shard - ref.first_shard + 1 != ref.shards:
            problems.append(f"manifest segment {ref.name} covers shards out of sequence")
        expected = ref.last_shard + 1
    for i, record in enumerate(kp.shards):
        if record.number != expected:
            problems.append(f"shard record {record.number} out of sequence (expected {expected})")
        if (record.name, record.id_map) != (
            names.shard_index(kind, record.number, kp.compaction),
            names.shard_id_map(kind, record.number, kp.compaction),
        ):
            problems.append(f"shard record {record.number} names {record.name}, {record.id_map}")
        if not record.sealed and i != len(kp.shards) - 1:
            problems.append(f"shard {record.number} is open but not the last shard")
        if record.vectors < 0:
            problems.append(f"shard {record.number} holds {record.vectors} vectors")
        expected = record.number + 1
    counted = sum(ref.vectors for ref in kp.segments) + sum(r.vectors for r in kp.shards)
    if counted != kp.total_vectors:
        problems.append(
            f"total_vectors is {kp.total_vectors} but the shard records hold {counted} vectors"
        )
    if sum(kp.vectors_per_brand.values()) != kp.total_vectors:
        problems.append(
            f"vectors_per_brand sums to {sum(kp.vectors_per_brand.values())}, "
            f"total_vectors is {kp.total_vectors}"
        )
    if kp.total_vectors and kp.cursor is None:
        problems.append(f"{kp.total_vectors} vectors committed but the cursor is empty")
    problem = cursor_problem(kp.cursor, kp.max_id)
    if problem:
        problems.append(problem)
    listed = sum(ref.count for ref in kp.tombstones) + len(kp.recent_dead)
    if listed != kp.dead or not 0 <= kp.dead <= kp.total_vectors:
        problems.append(
            f"dead is {kp.dead} but the tombstones list {listed} slots of {kp.total_vectors}"
        )
    return problems


def cursor_problem(cursor: ProductId | None, max_id: ProductId | None) -> str | None:
    """Why ids up to max_id cannot be indexed under this cursor (every id <= cursor), or None."""
    if max_id is None:
        return None
    if cursor is None:
        return f"ids up to {max_id!r} are indexed but the cursor is empty"
    if type(cursor) is not type(max_id):
        return f"indexed ids ({type(max_id).__name__}) and cursor {cursor!r} have different types"
    if max_id > cursor:  # type: ignore[operator]
        return (
            f"ids up to {max_id!r} are indexed but the cursor is {cursor!r} (was it set back?); "
            "a build from there would index them twice"
        )
    return None


def verify_sealed_id_maps(
    storage: Storage, progress: Progress, kind: str, listed: set[str], workers: int = 8
) -> ProductId | None:
    """Verify what a build of `kind` builds on besides its open shard, before the first write;
    returns the largest id of the sealed shards (None: none).

    Every committed shard object must be listed (names only); the manifest segments and the
    sealed id maps are read and verified, since `finish` rebuilds id_map_{kind}.json from them:
    ids only, about 8 bytes a vector where the vectors are 2 KB (512-d). Sealed vector files are
    not read: they are immutable and this run neither reads nor rewrites them (`check` does).
    """
    records = shard_records(storage, progress, kind)
    missing = [n for r in records for n in (r.name, r.id_map) if n not in listed]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise StateError(f"{missing[0]} is named by {names.PROGRESS} but missing{more}")

    def largest(record: ShardRecord) -> ProductId | None:
        ids = decode_ids(get_verified(storage, record.id_map, record.id_map_digests))
        if len(ids) != record.vectors:
            raise StateError(f"{record.id_map}: {len(ids)} ids, {record.vectors} committed")
        return _max_id(kind, ids)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = [m for m in pool.map(largest, [r for r in records if r.sealed]) if m is not None]
    return _max_id(kind, found)


def _max_id(kind: str, ids: Sequence[ProductId]) -> ProductId | None:
    try:
        return max(ids, default=None)  # type: ignore[type-var]
    except TypeError as exc:
        raise StateError(f"{kind}: the id maps mix int and string ids") from exc


def last_commit_marker(progress: Progress, data: bytes) -> bytes:
    """The content of last_commit.json for a progress.json just written as `data`."""
    marker = LastCommit(
        commit_seq=progress.commit_seq, run_id=progress.run_id, progress_sha256=sha256_hex(data)
    )
    return marker.model_dump_json().encode()


def rollback_problem(storage: Storage, progress: Progress) -> str | None:
    """Why this progress.json is older than the last commit made to the store, or None.

    Each commit writes last_commit.json after progress.json (one small object, one extra
    write per commit): a progress.json whose commit_seq is below it was put back from an
    older copy. A crash between the two writes leaves the marker one commit behind, which is
    fine; a store without the marker (older formats) is not checked.
    """
    try:
        marker = LastCommit.model_validate_json(storage.get(names.LAST_COMMIT))
    except ObjectNotFound:
        return None
    except ValidationError:
        return f"{names.LAST_COMMIT} is not valid"
    if marker.commit_seq > progress.commit_seq:
        return (
            f"{names.PROGRESS} is commit {progress.commit_seq} but commit {marker.commit_seq} "
            f"(run {marker.run_id!r}) was made: {names.PROGRESS} was rolled back (an older copy "
            f"put back?). Put the newer one back, or delete {names.LAST_COMMIT} to build on "
            "this older state"
        )
    return None


def check_not_rolled_back(storage: Storage, progress: Progress) -> None:
    problem = rollback_problem(storage, progress)
    if problem:
        raise StateError(f"refusing to resume {storage.describe()}: {problem}; {NOTHING_WRITTEN}")


def uncommitted_objects(
    listed: Sequence[str], progress: Progress, kinds: Sequence[str]
) -> list[str]:
    """Layout objects of these kinds (and failure chunks) that no commit refers to."""
    last_shard = {k: progress.kinds[k].last_shard_number() for k in kinds if k in progress.kinds}
    segments = {k: len(progress.kinds[k].segments) for k in kinds if k in progress.kinds}
    tombstones = {k: len(progress.kinds[k].tombstones) for k in kinds if k in progress.kinds}
    compaction = {k: progress.kinds[k].compaction for k in kinds if k in progress.kinds}
    # A retry rewrites the failure log under new numbers: a chunk is stale unless named.
    chunks = {ref.name for ref in progress.failures.chunks}
    leftovers = []
    for name in listed:
        parsed = names.parse(name)
        if parsed is None or parsed.number is None:
            continue
        if parsed.role == "failed":
            stale = name not in chunks
        elif parsed.kind not in kinds:
            continue
        elif parsed.compaction != compaction.get(parsed.kind or "", 0):
            stale = True  # retired by a compaction, or written by one that did not commit
        elif parsed.role == "manifest":
            stale = parsed.number > segments.get(parsed.kind or "", 0)
        elif parsed.role == "tombstones":
            stale = parsed.number > tombstones.get(parsed.kind or "", 0)
        else:
            stale = parsed.number > last_shard.get(parsed.kind or "", 0)
        if stale:
            leftovers.append(name)
    return leftovers
