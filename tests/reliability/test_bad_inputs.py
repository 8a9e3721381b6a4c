"""The bad-input zoo end to end: good images indexed, bad ones listed with reasons, exit 0."""

from __future__ import annotations

import csv
from pathlib import Path

from sharding.loader import load_index
from sharding.local_store import LocalStore
from tests.reliability.harness import KINDS, run_cli
from tests.support.image_server import ZOO_CASES, ImageServer
from tests.support.photos import PHOTO_NAMES

LOCAL_GOOD = 20


def _write_catalog(path: Path, rows: list[tuple[int, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image_url", "brand"])
        writer.writerows(rows)


def test_every_zoo_case_is_indexed_or_listed_with_its_reason(
    catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with ImageServer() as server:
        local = [(i, f"images/{i:05d}.jpg", "local") for i in range(1, LOCAL_GOOD + 1)]
        photos = [
            (1000 + n, server.url(f"/photos/{name}.{ext}"), "http")
            for n, (name, ext) in enumerate((p, e) for p in PHOTO_NAMES for e in ("jpg", "png"))
        ]
        zoo = {2000 + n: case for n, case in enumerate(ZOO_CASES)}
        rows = local + photos + [(pid, server.zoo_url(c), "zoo") for pid, c in zoo.items()]
        zoo_catalog = catalog.with_name("catalog-zoo.csv")  # local paths resolve next to it
        _write_catalog(zoo_catalog, rows)
        run_env = {
            **env,
            "FAISS_BUILDER_ALLOW_PRIVATE_URLS": "true",
            "FAISS_BUILDER_FETCH_TIMEOUT_S": "2",
        }
        args = ["build", "--store", str(store), "--catalog", str(zoo_catalog), "--json"]
        built = run_cli(args, run_env, tmp_path)
    assert built.code == 0, built.stderr
    status = run_cli(["status", "--store", str(store), "--failed", "--json"], env, tmp_path)
    assert status.code == 0, status.stderr
    failures = status.json()["failures"]
    assert isinstance(failures, list)
    listed = {f["id"]: f["reason"] for f in failures}
    assert all(f["message"] for f in failures)
    expected_bad = {pid: case.expected for pid, case in zoo.items() if case.expected != "ok"}
    assert listed == expected_bad
    good = [pid for pid, _, _ in local + photos] + [
        pid for pid, case in zoo.items() if case.expected == "ok"
    ]
    for kind in KINDS:
        assert sorted(load_index(LocalStore(store), kind).ids) == sorted(good), kind
    print(f"zoo: {len(rows)} inputs ({len(ZOO_CASES)} zoo cases), {len(expected_bad)} refused")
