"""Synthetic artists for the benchmark and the two ways to load them."""

from __future__ import annotations

import asyncio
import io
import uuid

import asyncpg
import numpy as np

from shared.grpc.channels import service_channel
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc

DIM = 384
BATCH = 1000


def name_of(i: int) -> str:
    return f"bench-artist-{i:06d}"


def clustered_unit_vectors(n: int, *, seed: int = 42) -> np.ndarray:
    """n unit vectors around n/100 random centres: genres, more or less.

    The spread keeps neighbourhoods overlapping, so the index has real work to
    do rather than finding ten identical points.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, n // 100), DIM)).astype(np.float32)
    labels = rng.integers(0, len(centres), n)
    points = centres[labels] + 0.7 * rng.normal(size=(n, DIM)).astype(np.float32)
    unit: np.ndarray = points / np.linalg.norm(points, axis=1, keepdims=True)
    return unit.astype(np.float32)


def _params(i: int) -> common_pb2.QuantitativeParams:
    tempo = 70.0 + (i * 37) % 110
    return common_pb2.QuantitativeParams(
        tempo_min=tempo - 10,
        tempo_max=tempo + 10,
        tempo_avg=tempo,
        swing_percent=float(i % 60),
        ghost_note_prob=(i % 10) / 10,
        syncopation_level=(i % 7) / 7,
        velocity_mean=90.0,
        velocity_std=12.0,
    )


def profile(i: int, vector: np.ndarray) -> common_pb2.StyleProfile:
    return common_pb2.StyleProfile(
        artist_name=name_of(i),
        text_description=f"Synthetic drummer number {i}.",
        quantitative_params=_params(i),
        midi_templates=[f"templates/{i % 50}.mid"],
        embedding=vector.tolist(),
        confidence_score=0.8,
        sources_count=common_pb2.SourceCounts(papers=1, articles=2),
    )


async def load_through_store(target: str, vectors: np.ndarray, *, in_flight: int = 2) -> None:
    """BatchSaveStyleProfiles, 1,000 profiles a call, a couple of calls in flight."""
    async with service_channel(target, retries=False) as channel:
        stub = store_grpc.ProfileStoreServiceStub(channel)
        gate = asyncio.Semaphore(in_flight)

        async def save(start: int) -> None:
            batch = [profile(i, vectors[i]) for i in range(start, min(start + BATCH, len(vectors)))]
            async with gate:
                await stub.BatchSaveStyleProfiles(
                    store_pb.BatchSaveStyleProfilesRequest(profiles=batch), timeout=300
                )

        await asyncio.gather(*(save(s) for s in range(0, len(vectors), BATCH)))


async def load_with_copy(dsn: str, vectors: np.ndarray) -> None:
    """COPY straight into the tables: the stand-in while the store's bulk RPC is pending."""
    ids = [uuid.uuid4() for _ in range(len(vectors))]
    artists = io.BytesIO()
    profiles = io.BytesIO()
    for i, vector in enumerate(vectors):
        params = _params(i)
        artists.write(f"{ids[i]}\t{name_of(i)}\tcached\n".encode())
        literal = "[" + ",".join(str(float(v)) for v in vector) + "]"
        json = f'{{"tempo_avg": {params.tempo_avg}, "tempo_min": {params.tempo_min}}}'
        profiles.write(f"{uuid.uuid4()}\t{ids[i]}\tsynthetic\t{json}\t{literal}\t0.8\n".encode())
    connection = await asyncpg.connect(dsn)
    try:
        artists.seek(0)
        profiles.seek(0)
        await connection.copy_to_table(
            "artists", source=artists, columns=["id", "name", "research_status"]
        )
        await connection.copy_to_table(
            "style_profiles",
            source=profiles,
            columns=[
                "id",
                "artist_id",
                "text_description",
                "quantitative_params",
                "embedding",
                "confidence_score",
            ],
        )
    finally:
        await connection.close()
