"""The FastAPI app: /health, /search, /search/image, /brands, /images/{id} and the page at /.

Every refusal is one line of JSON (`{"detail": "..."}`): 400 for a bad request, 401 for a
missing API key, 413 for an oversize upload, 503 while no commit is loaded, 500 (logged here,
never shown) for a bug. Searches run in worker threads, so the event loop keeps answering,
but for an unfiltered id looked up in an approximate index (about a millisecond), which the
fast lane (service.fastlane) answers on the loop itself, before FastAPI's request handling.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from application.connect import fetch_limits, open_catalog, open_storage
from application.errors import UsageError
from application.live import LiveIndex
from application.searcher import LoadedCommit, load_commit, text_query_vector
from application.settings import Kind, Settings
from service.fastlane import FastLane
from service.settings import ServiceSettings

log = logging.getLogger("faiss_builder.service")


class ServiceError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = " ".join(detail.split())[:500]


class SearchRequest(BaseModel):
    """Exactly one of `id`, `text`, `image_url`."""

    model_config = ConfigDict(extra="forbid")

    id: int | str | None = Field(None, description="Search by an indexed product's own vector.")
    text: str | None = Field(None, description="Search by a text (CLIP text tower).")
    image_url: str | None = Field(None, description="Search by an http(s) image URL.")
    kind: Kind = Field(Kind("color"), description="Which index to search.")  # type: ignore[valid-type]
    k: int = Field(10, description="How many results (1..max_k, 100 by default).")
    brand: str | None = Field(None, description="Only this brand's products.")
    exact: bool = Field(
        False, description="Exact flat search even where an approximate index serves."
    )


class SearchHit(BaseModel):
    id: int | str
    score: float
    brand: str | None
    image_url: str | None


class SearchResponse(BaseModel):
    results: list[SearchHit]
    kind: str
    commit: int


class Embedders:
    """The embedder of the served commit, loaded once per (embedder, model) and reused."""

    def __init__(self, device: str | None) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], Any] = {}
        self._failed: dict[tuple[str, str], str] = {}

    def get(self, commit: LoadedCommit) -> Any:
        """The embedder that built `commit`; 503 (one line) when it cannot be loaded here."""
        from modal_workers.embedders import load_embedder

        key = (commit.progress.embedder, commit.progress.model)
        with self._lock:
            if key in self._failed:
                raise ServiceError(503, self._failed[key])
            if key not in self._loaded:
                try:
                    embedder = load_embedder(key[0], key[1] or None, device=self.device)
                except Exception as exc:  # weights missing offline, an embedder unknown here
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    message = f"the {key[0]} embedder of this store cannot be loaded here: {first}"
                    self._failed = {key: message}  # not retried per request; a new commit retries
                    raise ServiceError(503, message) from None
                self._loaded = {key: embedder}
            return self._loaded[key]

    def warm(self, commit: LoadedCommit) -> None:
        """Load the embedder before the commit is served; id searches work without it."""
        self._failed = {}
        try:
            self.get(commit)
        except ServiceError as exc:
            log.warning("text and image queries unavailable: %s", exc.detail)


def create_app(
    settings: Settings,
    service: ServiceSettings,
    *,
    live: LiveIndex | None = None,
    fast_lane: bool = True,
) -> FastAPI:
    """The service over `settings`' store; `live` (tests) replaces the store poller;
    `fast_lane=False` (tests) leaves every request to the FastAPI routes."""
    embedders = Embedders(settings.embed.device)
    catalog_configured = _catalog_readable(settings)

    def load() -> LoadedCommit:
        catalog = open_catalog(settings) if catalog_configured else None
        cache = Path(settings.store.cache_dir) if settings.store.cache_dir else None
        commit = load_commit(open_storage(settings), catalog=catalog, cache_dir=cache)
        embedders.warm(commit)  # loaded before the swap: the first query does not wait for it
        return commit

    def read_seq() -> int | None:
        from sharding.state import read_progress

        progress = read_progress(open_storage(settings))
        return None if progress is None else progress.commit_seq

    def loaded(commit: LoadedCommit, seconds: float) -> None:
        log.info(
            "serving commit %s (%s), loaded in %.2f s",
            commit.commit_seq,
            commit.live_vectors(),
            seconds,
        )

    index = live or LiveIndex(
        load,
        read_seq,
        poll_s=service.poll_s,
        min_interval_s=service.min_reload_interval_s,
        on_load=loaded,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        index.start()
        try:
            yield
        finally:
            index.stop()

    app = FastAPI(
        title="faiss-builder search",
        description="Nearest products of an indexed id, a text or an image, over one store.",
        lifespan=lifespan,
    )
    app.state.live = index
    _add_error_handlers(app)

    def serving() -> LoadedCommit:
        commit = index.current
        if commit is None:
            reason = f": {index.last_error}" if index.last_error else ""
            raise ServiceError(503, f"no commit loaded yet{reason}")
        return commit

    def key_matches(given: str) -> bool:
        """The X-API-Key header (as Starlette decodes it, latin-1) against the configured key;
        True when none is configured."""
        if service.api_key is None:
            return True
        return hmac.compare_digest(given.encode(), service.api_key.get_secret_value().encode())

    def check_key(request: Request) -> None:
        if not key_matches(request.headers.get("x-api-key", "")):
            raise ServiceError(401, "missing or wrong X-API-Key header")

    def limit_threads() -> None:
        """This worker thread's OpenMP (faiss) and torch threads: OpenMP keeps the count per
        calling thread, so it is set where the query runs, not once at startup."""
        limit_query_threads(service.search_threads)

    def k_in_range(k: int) -> bool:
        return 1 <= k <= service.max_k

    def check_k(k: int) -> None:
        if not k_in_range(k):
            raise ServiceError(400, f"k must be between 1 and {service.max_k}, not {k}")

    def answer(
        commit: LoadedCommit,
        kind: str,
        vector: np.ndarray,
        k: int,
        brand: str | None,
        exact: bool = False,
    ) -> dict[str, Any]:
        results = commit.search(kind, vector, k, brand, exact=exact)
        return {
            "results": [
                {
                    "id": r.id,
                    "score": r.score,
                    "brand": r.brand,
                    "image_url": _shown_url(r, commit.catalog.local_root),
                }
                for r in results
            ],
            "kind": kind,
            "commit": commit.commit_seq,
        }

    def answer_on_loop(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The fast lane's answer (service.fastlane): an unfiltered id query of a kind an
        approximate index serves, answered on the event loop; None for anything else (the
        route then answers it, refusals included)."""
        given = next((value for name, value in headers if name == b"x-api-key"), b"")
        if not key_matches(given.decode("latin-1")):
            return None
        try:
            query = SearchRequest.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return None
        commit = index.current
        kind = str(query.kind.value)
        if (
            commit is None
            or query.id is None
            or query.text is not None
            or query.image_url is not None
            or query.brand is not None
            or query.exact
            or not k_in_range(query.k)
            or kind not in commit.approximate
        ):
            return None
        limit_threads()
        try:
            vector = commit.stored_vector(kind, query.id)
        except UsageError:  # an id not in the index: the route says so
            return None
        return orjson.dumps(answer(commit, kind, vector, query.k, None))

    app.state.fast_lane = answer_on_loop if fast_lane else None
    if fast_lane:
        app.add_middleware(FastLane, answer=answer_on_loop)  # inside CORS, added after it
    if service.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        origins = [origin.strip() for origin in service.cors_origins.split(",") if origin.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The commit served and its live vectors per kind (503 until one is loaded)."""
        # On the loop: a few attribute reads, no I/O; probes ask often.
        commit = serving()
        return {
            "status": "ok",
            "commit": commit.commit_seq,
            "vectors": commit.live_vectors(),
            "embedder": commit.progress.embedder,
            "model": commit.progress.model,
            "catalog": commit.catalog.available,
            "approximate": sorted(commit.approximate),
            "reload_error": index.last_error,
            "reloads": {"loads": index.loads, "skipped": index.skipped},
        }

    @app.get("/brands")
    def brands() -> dict[str, Any]:
        """The brands a search can be filtered by (from the catalog)."""
        commit = serving()
        return {"brands": commit.brands(), "commit": commit.commit_seq}

    @app.post("/search", response_model=SearchResponse)
    async def search(body: SearchRequest, request: Request) -> Response:
        """Nearest products of an indexed id, a text or an http(s) image URL."""
        check_key(request)
        given = [name for name in ("id", "text", "image_url") if getattr(body, name) is not None]
        if len(given) != 1:
            raise ServiceError(
                400, f"give exactly one of id, text, image_url (got {', '.join(given) or 'none'})"
            )
        check_k(body.k)
        kind = str(body.kind.value)
        commit = serving()
        commit.index(kind)

        def run() -> dict[str, Any]:
            limit_threads()
            if body.id is not None:
                vector = commit.stored_vector(kind, body.id)
            elif body.text is not None:
                embedder = embedders.get(commit)
                vector = _text_vector(embedder, body.text, kind, service.max_text_chars)
            else:
                assert body.image_url is not None
                vector = _url_vector(settings, embedders.get(commit), body.image_url, kind)
            return answer(commit, kind, vector, body.k, body.brand, body.exact)

        return _json(await run_in_threadpool(run))

    @app.post(
        "/search/image",
        response_model=SearchResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "kind": {
                                    "type": "string",
                                    "enum": [str(k.value) for k in Kind],
                                    "default": "color",
                                },
                                "k": {"type": "integer", "default": 10},
                                "brand": {"type": "string"},
                                "exact": {"type": "boolean", "default": False},
                            },
                        }
                    }
                },
            }
        },
    )
    async def search_image(request: Request) -> Response:
        """Nearest products of an uploaded image (multipart field `file`; kind, k, brand, exact
        as fields)."""
        check_key(request)
        data, fields = await _read_upload(request, service.max_upload_bytes)
        kind = fields.get("kind") or "color"
        if kind not in {str(k.value) for k in Kind}:
            raise ServiceError(
                400, f"kind {kind!r}: choose from {', '.join(str(k.value) for k in Kind)}"
            )
        try:
            k = int(fields.get("k") or 10)
        except ValueError:
            raise ServiceError(400, f"k {fields.get('k')!r} is not an integer") from None
        check_k(k)
        brand = fields.get("brand") or None
        exact = _form_bool(fields.get("exact"), "exact")
        commit = serving()
        commit.index(kind)

        def run() -> dict[str, Any]:
            limit_threads()
            vector = _upload_vector(embedders.get(commit), data, kind, service.max_upload_pixels)
            return answer(commit, kind, vector, k, brand, exact)

        return _json(await run_in_threadpool(run))

    @app.get("/images/{product_id}")
    def image(product_id: str) -> Response:
        """A local catalog's image file (the page shows it); http(s) images are linked directly."""
        from modal_workers.decode import sniff_format
        from modal_workers.fetch import read_local_file
        from modal_workers.reasons import ImageRefused

        commit = serving()
        key: Any = int(product_id) if product_id.lstrip("-").isdigit() else product_id
        entry = commit.catalog.products.get(key) or commit.catalog.products.get(product_id)
        if entry is None or commit.catalog.local_root is None:
            raise ServiceError(404, f"no local image for id {product_id!r}")
        try:
            data = read_local_file(entry[1], fetch_limits(settings, commit.catalog.local_root))
        except ImageRefused as exc:
            raise ServiceError(404, f"image of id {product_id!r}: {exc.reason}") from None
        media = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
        return Response(
            data, media_type=media.get(sniff_format(data) or "", "application/octet-stream")
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("service").joinpath("static/index.html").read_text(encoding="utf-8")

    return app


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def limit_query_threads(count: int) -> None:
    """OpenMP (faiss) and torch threads of the calling thread, as a query runs in the service."""
    import sys

    import faiss

    if faiss.omp_get_max_threads() != count:
        faiss.omp_set_num_threads(count)
    torch = sys.modules.get("torch")  # loaded with a CLIP embedder, never imported here for it
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _json(payload: dict[str, Any]) -> Response:
    """A search answer as JSON, serialised once by orjson: the route's response_model documents
    it (OpenAPI) without validating it again (about 40 us of a request's 0.3 ms here)."""
    return Response(orjson.dumps(payload), media_type="application/json")


def _form_bool(value: str | None, name: str) -> bool:
    """A form field's boolean (true/false, 1/0, yes/no, on/off; absent: false)."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ServiceError(400, f"{name} {value!r} is not a boolean (true or false)")


def _shown_url(result: Any, local_root: str | None) -> str | None:
    """An http(s) image URL as it is; a local catalog's path as /images/{id}; else None (a
    private-bucket object path, which this service does not sign)."""
    url = result.image_url
    if url is None:
        return None
    if url.lower().startswith(("http://", "https://")):
        return str(url)
    return f"/images/{result.id}" if local_root is not None else None


def _catalog_readable(settings: Settings) -> bool:
    """A catalog is used for brands and image URLs when it is Supabase or an existing file."""
    name = settings.catalog.catalog
    return name == "supabase" or Path(name).is_file()


def _text_vector(embedder: Any, text: str, kind: str, max_chars: int) -> np.ndarray:
    from modal_workers.embedder import NoTextTower, embed_text

    text = text.strip()
    if not text:
        raise ServiceError(400, "text is empty")
    if len(text) > max_chars:
        raise ServiceError(400, f"text has {len(text)} characters, more than {max_chars}")
    try:
        vector = embed_text(embedder, [text])[0]
    except NoTextTower as exc:
        raise ServiceError(400, str(exc)) from None
    return text_query_vector(vector, kind)


def _url_vector(settings: Settings, embedder: Any, url: str, kind: str) -> np.ndarray:
    from modal_workers.fetch import is_http_url
    from modal_workers.pipeline import embed_query_image
    from modal_workers.reasons import ImageRefused

    if not is_http_url(url):
        raise ServiceError(400, "image_url must be an http(s) URL")
    try:
        vectors = embed_query_image(url, [kind], embedder, fetch_limits(settings, None))
    except ImageRefused as exc:
        raise ServiceError(400, f"image_url refused: {exc.reason}: {exc.message}") from None
    return vectors[kind][0]


def _upload_vector(embedder: Any, data: bytes, kind: str, max_pixels: int) -> np.ndarray:
    from modal_workers.decode import decode_image
    from modal_workers.reasons import ImageRefused

    try:
        image = decode_image(data, max_pixels, embedder.decode_edge)
    except ImageRefused as exc:
        raise ServiceError(400, f"upload refused: {exc.reason}: {exc.message}") from None
    return embedder.embed([image], [kind])[kind][0]


class _TooLarge(Exception):
    pass


async def _read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The `file` part and the text fields of a multipart body of at most `limit` bytes (+ 64 KiB
    for the fields and boundaries); 413 as soon as more arrives, whatever Content-Length said."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    allowed = limit + 65_536
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > allowed:
        raise ServiceError(413, f"upload of {declared} bytes is over the {limit}-byte limit")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ServiceError(400, "send the image as multipart/form-data in a field named `file`")

    async def bounded() -> AsyncGenerator[bytes, None]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > allowed:
                raise _TooLarge
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise ServiceError(413, f"upload is over the {limit}-byte limit") from None
    except MultiPartException as exc:
        raise ServiceError(400, f"bad multipart body: {exc.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ServiceError(400, "no image in a multipart field named `file`")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ServiceError(413, f"upload is over the {limit}-byte limit")
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return data, fields
    finally:
        await form.close()


def _add_error_handlers(app: FastAPI) -> None:
    from modal_workers.embedder import NoTextTower

    def one_line(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(detail).split())[:500]}, status_code=status)

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return one_line(exc.status, exc.detail)

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        return one_line(400, str(exc))

    @app.exception_handler(NoTextTower)
    async def _no_text(_: Request, exc: NoTextTower) -> JSONResponse:
        return one_line(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return one_line(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return one_line(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return one_line(500, "internal error (logged by the service)")
