"""The `faiss-builder` command line: demo, build, check, compact, search, serve, status, doctor."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from faiss_builder import errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, check and search sharded FAISS indexes of a product-image catalog.",
)

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Local folder or `supabase` [env FAISS_BUILDER_STORE]")
]
CatalogOpt = Annotated[
    str | None,
    typer.Option("--catalog", help="CSV/JSONL file or `supabase` [env FAISS_BUILDER_CATALOG]"),
]
KindsOpt = Annotated[
    str | None,
    typer.Option(
        "--kinds", help="Comma-separated: color,structure,combined [env FAISS_BUILDER_KINDS]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
PrivateOpt = Annotated[
    bool | None,
    typer.Option(
        "--allow-private-urls/--no-allow-private-urls",
        help="Allow loopback/private image hosts [env FAISS_BUILDER_ALLOW_PRIVATE_URLS]",
    ),
]


def main() -> None:
    """Console-script entry point."""
    app()


@app.callback()
def _quiet_libraries() -> None:
    """Keep library chatter off the terminal; the CLI prints its own progress and one-line errors."""
    # Prefect run logs still reach the Prefect API and UI; set the variable to INFO to see them here.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@app.command()
def build(
    catalog: CatalogOpt = None,
    store: StoreOpt = None,
    kinds: KindsOpt = None,
    max_images: Annotated[int | None, typer.Option("--max-images", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help="clip | histogram")] = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP model id or folder")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="local | modal")] = None,
    allow_private_urls: PrivateOpt = None,
    retry_failed: Annotated[
        bool | None,
        typer.Option(
            "--retry-failed/--no-retry-failed",
            help="Re-fetch and re-embed failed products first [env FAISS_BUILDER_RETRY_FAILED]",
        ),
    ] = None,
    reconcile: Annotated[
        bool | None,
        typer.Option(
            "--reconcile/--no-reconcile",
            help="Also find rows deleted from a Supabase table [env FAISS_BUILDER_RECONCILE]",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed pending catalog products into the index (runs the build-index Prefect flow)."""
    with _errors_to_exit_codes():
        from faiss_builder.runner import run_build

        settings = _settings(
            catalog=catalog,
            store=store,
            kinds=kinds,
            max_images=max_images,
            batch_size=batch_size,
            embedder=embedder,
            model=model,
            backend=backend,
            allow_private_urls=allow_private_urls,
            retry_failed=retry_failed,
            reconcile=reconcile,
        )
        summary = run_build(settings, show_progress=not as_json)
        _emit(summary, as_json, _render_build)


@app.command()
def check(
    store: StoreOpt = None,
    catalog: CatalogOpt = None,
    kinds: KindsOpt = None,
    sample: Annotated[int, typer.Option("--sample", min=0, help="Products to re-embed")] = 8,
    allow_private_urls: PrivateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prove index and id maps agree; exit 0 only when aligned."""
    with _errors_to_exit_codes():
        from application.verify import run_alignment_check

        settings = _settings(
            store=store, catalog=catalog, kinds=kinds, allow_private_urls=allow_private_urls
        )
        outcome = run_alignment_check(
            settings,
            sample=sample,
            kinds=list(settings.embed.kinds) if kinds else None,
            # The structural report is out in about a second; the sample follows.
            on_store_report=None if as_json else typer.echo,
        )
        _emit(outcome, as_json, _render_check_tail)
        if not outcome["ok"]:
            raise typer.Exit(errors.EXIT_CHECK_FAILED)


@app.command()
def compact(
    store: StoreOpt = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            help="Brands of the live products, recounted (CSV/JSONL file or `supabase`) "
            "[env FAISS_BUILDER_CATALOG]",
        ),
    ] = None,
    kinds: KindsOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Compact a kind whose dead slots reach this fraction "
            "[env FAISS_BUILDER_COMPACT_THRESHOLD] 0.3",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rewrite kinds with many dead slots (deleted or replaced products) into new shards."""
    with _errors_to_exit_codes():
        import uuid

        from application.compact import run_compaction

        settings = _settings(store=store, catalog=catalog, kinds=kinds)
        summary = run_compaction(
            settings,
            f"compact-{uuid.uuid4()}",
            kinds=list(settings.embed.kinds) if kinds else None,
            threshold=threshold,
            log=_err,
        )
        _emit(summary, as_json, _render_compact)


@app.command()
def search(
    store: StoreOpt = None,
    image: Annotated[str | None, typer.Option("--image", help="Query image path or URL")] = None,
    product_id: Annotated[str | None, typer.Option("--id", help="Query by an indexed id")] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="Query by a text (CLIP text tower)")
    ] = None,
    kind: Annotated[str, typer.Option("--kind")] = "color",
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000)] = 10,
    catalog: CatalogOpt = None,
    allow_private_urls: PrivateOpt = None,
    as_json: JsonOpt = False,
    exact: Annotated[
        bool,
        typer.Option("--exact", help="Exact flat search even where an approximate index serves"),
    ] = False,
) -> None:
    """Find the products most similar to an image, an indexed product or a text."""
    with _errors_to_exit_codes():
        if [image, product_id, text].count(None) != 2:
            raise errors.UsageError("give exactly one of --image, --id or --text")
        from application.queries import search_store

        settings = _settings(store=store, catalog=catalog, allow_private_urls=allow_private_urls)
        result = search_store(
            settings, kind=kind, k=k, image=image, product_id=product_id, text=text, exact=exact
        )
        _emit(result, as_json, _render_search)


@app.command()
def serve(
    store: StoreOpt = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog", help="Brands and image URLs of the results (CSV/JSONL file or `supabase`)"
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="[env FAISS_BUILDER_SERVICE_HOST] 127.0.0.1")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="[env FAISS_BUILDER_SERVICE_PORT] 8000")
    ] = None,
    poll_s: Annotated[
        float | None,
        typer.Option("--poll-s", help="Seconds between reads of progress.json (default 2)"),
    ] = None,
    allow_private_urls: PrivateOpt = None,
) -> None:
    """Serve searches over HTTP (API, OpenAPI at /docs, a page at /); reloads each new commit."""
    with _errors_to_exit_codes():
        from service.server import run_service
        from service.settings import ServiceSettings

        settings = _settings(store=store, catalog=catalog, allow_private_urls=allow_private_urls)
        overrides: dict[str, Any] = {"host": host, "port": port, "poll_s": poll_s}
        service = ServiceSettings(**{key: v for key, v in overrides.items() if v is not None})
        run_service(settings, service, echo=_err)


@app.command()
def status(
    store: StoreOpt = None,
    failed: Annotated[bool, typer.Option("--failed", help="List failed products")] = False,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            help="Also count this catalog's rows that sort at or below the cursor but were "
            "never indexed (CSV/JSONL file or `supabase`)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What the store holds: vectors and shards per kind, cursor, failures."""
    with _errors_to_exit_codes():
        from application.queries import store_status

        settings = _settings(store=store, catalog=catalog)
        result = store_status(settings, include_failures=failed, with_catalog=catalog is not None)
        _emit(result, as_json, _render_status)


@app.command()
def doctor(
    store: StoreOpt = None,
    catalog: CatalogOpt = None,
    backend: Annotated[str | None, typer.Option("--backend", help="local | modal")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check configuration and connectivity without writing anything."""
    with _errors_to_exit_codes():
        from faiss_builder.doctor import run_doctor

        result = run_doctor(_settings(store=store, catalog=catalog, backend=backend))
        _emit(result, as_json, _render_doctor)
        if not result["ok"]:
            raise typer.Exit(errors.EXIT_CHECK_FAILED)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--folder", help="Where the demo writes")] = Path("demo"),
    products: Annotated[int, typer.Option("--products", min=10, max=5000)] = 240,
    embedder: Annotated[str, typer.Option("--embedder", help="auto | clip | histogram")] = "auto",
) -> None:
    """Build a real index from bundled photographs, check it and search it: no accounts needed."""
    with _errors_to_exit_codes():
        from faiss_builder.demo import run_demo

        run_demo(folder, products=products, embedder=embedder, echo=_err)


def _settings(**overrides: Any) -> Any:
    from application.settings import load_settings

    return load_settings(**overrides)


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    """Known failures become one line on stderr and a documented exit code; no traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        code, message = errors.describe(exc)
        if code is None:
            raise
        _err(f"faiss-builder: error: {message}")
        raise typer.Exit(code) from None


def _emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        typer.echo(render(result))


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _render_build(summary: dict[str, Any]) -> str:
    lines = [
        f"Built {', '.join(summary['kinds'])} with {summary['embedder']} ({summary['model']}) "
        f"into {summary['store']}",
        f"  products {summary['products']}, failed {summary['failed']}, "
        f"{summary['images_per_s']} images/s",
    ]
    lines += [
        f"  {kind:<10} +{summary['vectors_added'][kind]} vectors, "
        f"{summary['total_vectors'][kind]} total in {summary['shards'][kind]} shard(s)"
        for kind in summary["kinds"]
    ]
    lines += [f"  warning: {warning}" for warning in summary.get("warnings", [])]
    return "\n".join(lines)


def _render_compact(summary: dict[str, Any]) -> str:
    lines = [
        f"Compaction of {summary['store']} (threshold {summary['threshold']}): "
        + (
            f"commit {summary['commit_seq']}"
            if summary["commit_seq"] is not None
            else "nothing to compact"
        )
    ]
    for kind, c in summary["kinds"].items():
        if c["action"] == "compacted":
            lines.append(
                f"  {kind:<10} compacted: {c['dead_before']} dead of {c['slots_before']} slots "
                f"dropped, {c['live']} live in {c['shards_after']} shard(s) "
                f"(were {c['shards_before']})"
            )
        else:
            lines.append(
                f"  {kind:<10} {c['action'].replace('_', ' ')}: dead fraction "
                f"{c['dead_fraction']:.3f}"
            )
    if summary["objects_deleted"]:
        lines.append(f"  {summary['objects_deleted']} retired object(s) deleted")
    lines += [f"  warning: {warning}" for warning in summary.get("warnings", [])]
    return "\n".join(lines)


def _render_check_tail(outcome: dict[str, Any]) -> str:
    """What follows the structural report: the sample's result, then the verdict."""
    verdict = f"alignment check: {'PASS' if outcome['ok'] else 'FAIL'}"
    sample_text = outcome.get("sample_text")
    return f"{sample_text}\n\n{verdict}" if sample_text else verdict


def _render_search(result: dict[str, Any]) -> str:
    lines = [f"{result['kind']} neighbours of {result['query']} ({result['embedder']}):"]
    lines += [
        f"  {rank:>3}. id={hit['id']!s:<12} score={hit['score']:.4f}  brand={hit.get('brand') or '-'}"
        for rank, hit in enumerate(result["hits"], start=1)
    ]
    return "\n".join(lines)


def _render_status(result: dict[str, Any]) -> str:
    if not result.get("initialised"):
        return f"{result['store']}: empty (no progress.json yet)"
    lines = [
        f"{result['store']}: embedder {result['embedder']} ({result['model']}), "
        f"commit {result['commit_seq']} by run {result['run_id']} at {result['written_at']}"
    ]
    lines += [
        f"  {kind:<10} {info['vectors']} vectors in {info['shards']} shard(s), dim {info['dim']}, "
        f"cursor {info['cursor']!r}"
        for kind, info in result["kinds"].items()
    ]
    lines += [
        f"  {kind:<10} approximate index {a['type']} g{a['generation']}: nlist {a['nlist']}, "
        f"nprobe {a['nprobe']}, recall@10 {a['recall_at_10']}, {a['vectors']} vectors, "
        + ("serving" if a["serving"] else "not serving (search is exact)")
        for kind, a in result.get("ann", {}).items()
    ]
    lines.append(f"  failed products: {result['failed_count']}")
    lines += [f"  warning: {warning}" for warning in result.get("warnings", [])]
    lines += [
        f"    {f['id']!r}: {f['reason']} — {f['message']}" for f in result.get("failures", [])
    ]
    return "\n".join(lines)


def _render_doctor(result: dict[str, Any]) -> str:
    return "\n".join(
        f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}"
        for check in result["checks"]
    )
