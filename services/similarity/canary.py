"""Periodic recall canary: measures the index against exact search and exports the gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.similarity.repository import SimilarityRepository
from shared.errors import FailedPrecondition
from shared.metrics import SIMILARITY_RECALL

log = logging.getLogger(__name__)


async def measure_once(
    repository: SimilarityRepository, *, sample_size: int, k: int
) -> float | None:
    """One measurement; None (gauge untouched) while there is nothing to measure."""
    try:
        report = await repository.measure_recall(
            sample_size=sample_size, k=k, ef_search=None, time_left=None
        )
    except FailedPrecondition:
        return None
    SIMILARITY_RECALL.labels(k=str(k)).set(report.recall)
    log.info(
        "recall canary: recall@%s = %.4f over %s artists", k, report.recall, report.sample_size
    )
    return report.recall


def recall_canary(
    repository: SimilarityRepository, *, interval_seconds: float, sample_size: int, k: int
) -> Callable[[], Coroutine[Any, Any, None]]:
    """The background job for ServiceDefinition.background: measure, then sleep, forever."""

    async def run() -> None:
        while True:
            try:
                await measure_once(repository, sample_size=sample_size, k=k)
            except Exception as exc:  # a failed round must not end the canary
                log.warning("recall canary failed: %s", exc)
            await asyncio.sleep(interval_seconds)

    return run
