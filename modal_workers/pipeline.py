"""The one embedding path, local and on Modal: fetch -> decode once -> views -> embed -> fuse."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx
import numpy as np
from PIL import Image

from modal_workers.budget import PixelBudget
from modal_workers.decode import finish_decode, open_for_decode, without_bytes
from modal_workers.embedder import DEFAULT_FORWARD_BATCH, ImageEmbedder
from modal_workers.fetch import fetch_image_bytes, is_http_url, open_client
from modal_workers.reasons import ImageRefused
from modal_workers.types import (
    EmbedOutput,
    FailedProduct,
    FetchLimits,
    ImageRef,
    check_kinds,
    views_for,
)
from modal_workers.views import assemble_kinds

if TYPE_CHECKING:
    from modal_workers.prepare_pool import PreparePool

Prepared = dict[str, np.ndarray]
FORWARD_BATCH = DEFAULT_FORWARD_BATCH  # when neither the caller nor the embedder says
WINDOW_BATCHES = 3  # images prepared ahead of the model: bounded memory, GPU kept fed


class Preparing(Protocol):
    """What load_prepared needs of an embedder (an ImageEmbedder, or a pool's CropPreparer)."""

    @property
    def decode_edge(self) -> int: ...

    def prepare(self, image: Image.Image, views: Sequence[str]) -> Prepared: ...


def embed_refs(
    refs: Sequence[ImageRef],
    kinds: Sequence[str],
    embedder: ImageEmbedder,
    limits: FetchLimits | None = None,
    *,
    forward_batch: int | None = None,
    budget: PixelBudget | None = None,
    client: httpx.Client | None = None,
    pool: PreparePool | None = None,
) -> EmbedOutput:
    """Embed refs; ids keep the input order of successes, each refusal becomes a FailedProduct.

    `forward_batch` (images per embed_views call) defaults to the embedder's own, which suits its
    device (CLIP: 32 on CPU, 128 on CUDA). Memory: at most forward_batch x WINDOW_BATCHES prepared
    crops wait for the model, and the threads hold at most limits.max_pixels_in_flight decoded
    pixels at once (PixelBudget). `client` is a fetch client the caller keeps across calls (a
    Modal container's SharedClients); without one, the call opens and closes its own.

    `pool` (a PreparePool made for this embedder's crop) prepares in its worker processes, each
    with its own client and pixel budgets (`client`, `budget` and limits.threads are then the
    pool's, not the call's): same ids, vectors and failures, in the same order.
    """
    kinds = check_kinds(kinds)
    limits = limits or FetchLimits()
    batch_size: int = forward_batch or getattr(embedder, "forward_batch", None) or FORWARD_BATCH
    views = views_for(kinds)
    ids: list = []
    parts: dict[str, list[np.ndarray]] = {view: [] for view in views}
    failures: list[FailedProduct] = []
    with prepared_batches(
        refs, views, embedder, limits, batch_size, failures, budget, client, pool
    ) as batches:
        for batch_ids, stacked in batches:
            ids.extend(batch_ids)
            for view, vectors in embedder.embed_views(stacked).items():
                parts[view].append(vectors)
    by_view = {view: join_parts(parts[view], embedder.dims[view]) for view in views}
    return EmbedOutput(ids=ids, vectors=assemble_kinds(by_view, kinds), failures=failures)


@contextmanager
def prepared_batches(
    refs: Sequence[ImageRef],
    views: Sequence[str],
    embedder: ImageEmbedder,
    limits: FetchLimits,
    batch_size: int,
    failures: list[FailedProduct],
    budget: PixelBudget | None,
    client: httpx.Client | None,
    pool: PreparePool | None,
) -> Iterator[Iterator[tuple[list, dict[str, np.ndarray]]]]:
    """Forward batches (ids, {view: stacked uint8}) in input order; failures go to `failures`."""
    if pool is not None and pool.serves(embedder):
        batches = pool.prepared_batches(refs, views, limits, batch_size, failures)
        try:
            yield batches
        finally:
            batches.close()  # frees the slots of chunks an aborted call still held
        return
    budget = budget or PixelBudget(limits.max_pixels_in_flight)
    opened = nullcontext(client) if client is not None else open_client(limits)
    with opened as fetch_client, ThreadPoolExecutor(limits.threads) as threads:

        def load(ref: ImageRef) -> Prepared | FailedProduct:
            return load_prepared(ref, views, embedder, limits, fetch_client, budget)

        results = prepared_in_order(threads, load, refs, window=batch_size * WINDOW_BATCHES)
        yield (
            (
                [ref.id for ref, _ in batch],
                {view: np.stack([prep[view] for _, prep in batch]) for view in views},
            )
            for batch in successes_in_batches(results, batch_size, failures)
        )


def load_prepared(
    ref: ImageRef,
    views: Sequence[str],
    embedder: Preparing,
    limits: FetchLimits,
    client: httpx.Client,
    budget: PixelBudget | None = None,
) -> Prepared | FailedProduct:
    """One image from URL to model-ready views; runs in a worker thread, never raises.

    The header is checked first (format, pixels, aspect ratio); the decoded pixels are then held
    under `budget` until the crop is made, so concurrent decodes stay within the batch's cap.
    """
    budget = budget or PixelBudget(limits.max_pixels_in_flight)
    try:
        data = fetch_image_bytes(ref.url, limits, client)
        header, kind = open_for_decode(data, limits.max_pixels, embedder.decode_edge)
        del data  # the lazily opened image keeps its own reference to the bytes
        with budget.hold(header.width * header.height):
            return embedder.prepare(finish_decode(header, kind), views)
    except ImageRefused as exc:
        return FailedProduct(ref.id, exc.reason, exc.message)
    except Exception as exc:  # one strange image must not abort the batch
        message = f"{type(exc).__name__}: {without_bytes(str(exc))}"
        return FailedProduct(ref.id, "unexpected_error", message)


def prepared_in_order(
    pool: ThreadPoolExecutor,
    load: Callable[[ImageRef], Prepared | FailedProduct],
    refs: Sequence[ImageRef],
    window: int,
) -> Iterator[tuple[ImageRef, Prepared | FailedProduct]]:
    """Results in input order while at most `window` images are in flight or waiting."""
    remaining = iter(refs)
    pending: deque[tuple[ImageRef, Future[Prepared | FailedProduct]]] = deque(
        (ref, pool.submit(load, ref)) for ref in itertools.islice(remaining, window)
    )
    while pending:
        ref, future = pending.popleft()
        for following in itertools.islice(remaining, 1):
            pending.append((following, pool.submit(load, following)))
        yield ref, future.result()


def successes_in_batches(
    results: Iterator[tuple[ImageRef, Prepared | FailedProduct]],
    size: int,
    failures: list[FailedProduct],
) -> Iterator[list[tuple[ImageRef, Prepared]]]:
    """Group prepared images into forward batches; failures are collected on the side."""
    batch: list[tuple[ImageRef, Prepared]] = []
    for ref, result in results:
        if isinstance(result, FailedProduct):
            failures.append(result)
            continue
        batch.append((ref, result))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def join_parts(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def embed_query_image(
    source: str, kinds: Sequence[str], embedder: ImageEmbedder, limits: FetchLimits | None = None
) -> dict[str, np.ndarray]:
    """Vectors (1, dim) per kind for one query image (URL or local path); ImageRefused if not."""
    limits = limits or FetchLimits()
    if not is_http_url(source) and limits.local_root is None:
        # The user's own file, named on their command line: any path they can read is theirs.
        limits = dataclasses.replace(
            limits, local_root=str(Path.cwd()), local_allowed_root=Path.cwd().anchor
        )
    output = embed_refs([ImageRef(id="query", url=source)], kinds, embedder, limits)
    if output.failures:
        raise ImageRefused(output.failures[0].reason, output.failures[0].message)
    return output.vectors
