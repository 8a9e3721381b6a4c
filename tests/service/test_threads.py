"""Each query's thread runs faiss (OpenMP) and torch with FAISS_BUILDER_SERVICE_SEARCH_THREADS."""

from __future__ import annotations

import threading

import faiss
import torch

from service.app import limit_query_threads


def _in_a_new_thread(count: int) -> tuple[int, int, int]:
    seen: list[int] = []

    def run() -> None:
        seen.append(faiss.omp_get_max_threads())  # a new thread starts from OpenMP's default
        limit_query_threads(count)
        seen.extend([faiss.omp_get_max_threads(), torch.get_num_threads()])

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0], seen[1], seen[2]


def test_a_query_thread_gets_the_configured_threads() -> None:
    default, omp, torch_threads = _in_a_new_thread(1)
    assert (omp, torch_threads) == (1, 1)
    _, omp, torch_threads = _in_a_new_thread(3)
    assert (omp, torch_threads) == (3, 3)
    assert default >= 1
