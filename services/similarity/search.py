"""Nearest-artist search over the HNSW index on style_profiles.embedding, with exact fallback."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.db.engine import Database, positional
from shared.errors import ArtistNotFound, FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class SearchFilter:
    """Candidate restrictions; None does not filter."""

    tempo_min: float | None = None
    tempo_max: float | None = None
    research_status: str | None = None


@dataclass(frozen=True)
class Tuning:
    """Per-request search options; ef_search None means the service default."""

    ef_search: int | None = None
    exact: bool = False


@dataclass(frozen=True)
class IndexSettings:
    """Service-wide knobs of the index scan (from the service's settings)."""

    ef_search: int = 40
    max_scan_tuples: int = 20_000
    iterative_scan: str = "relaxed_order"


@dataclass(frozen=True)
class Match:
    artist_id: uuid.UUID
    artist_name: str
    similarity: float


@dataclass(frozen=True)
class Query:
    """One nearest-neighbour query: a vector (pgvector text form) or a stored artist's
    embedding (source_name, itself left out), and what else to leave out."""

    limit: int
    vector: str | None = None
    source_name: str | None = None
    exclude_ids: Sequence[uuid.UUID] = ()
    exclude_names: Sequence[str] = ()
    filter: SearchFilter = field(default_factory=SearchFilter)
    tuning: Tuning = field(default_factory=Tuning)


@dataclass(frozen=True)
class StoredEmbedding:
    artist_id: uuid.UUID
    artist_name: str
    vector: str


def vector_literal(values: Sequence[float] | np.ndarray[Any, Any]) -> str:
    """pgvector's text form; str(float) is the shortest form that round-trips."""
    return "[" + ",".join(str(float(v)) for v in values) + "]"


def parse_vector(literal: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(literal[1:-1].split(","), dtype=np.float64)


# The inner query orders by the distance operator itself, which is what the HNSW
# index serves; in exact mode `+ 0` makes an expression the index cannot serve, so
# the planner computes every distance. The outer query re-sorts because
# iterative relaxed_order scans may return rows slightly out of order, and breaks
# ties by name so equal distances come back in a stable order. A source artist's
# embedding is read by a subquery (an InitPlan the index scan takes as its
# argument), so the common FindSimilarArtists is one statement; when it has no
# embedding the one-time filter `IS NOT NULL` returns nothing and the caller
# looks up why.
_SEARCH_SQL = """
WITH candidates AS MATERIALIZED (
    SELECT a.id, a.name, {distance} AS distance
    FROM style_profiles sp
    JOIN artists a ON a.id = sp.artist_id
    WHERE sp.embedding IS NOT NULL
      AND {vector} IS NOT NULL
      AND NOT (sp.artist_id = ANY(CAST(:exclude_ids AS uuid[])))
      AND NOT (a.name = ANY(CAST(:exclude_names AS text[])))
      {filters}
    ORDER BY {distance}
    LIMIT :limit
)
SELECT id, name, 1 - distance AS similarity FROM candidates ORDER BY distance, name
"""
_GIVEN_VECTOR = "CAST(CAST(:q AS text) AS vector)"
_SOURCE_VECTOR = (
    "(SELECT src.embedding FROM style_profiles src"
    " JOIN artists src_artist ON src_artist.id = src.artist_id"
    " WHERE src_artist.name = :source)"
)

_LOOKUP_SQL = text(
    """
    SELECT a.id, a.name, sp.id IS NOT NULL AS has_profile, sp.embedding::text AS embedding
    FROM artists a LEFT JOIN style_profiles sp ON sp.artist_id = a.id
    WHERE a.name = ANY(CAST(:names AS text[]))
    """
)


def configure_sessions(engine: AsyncEngine, index: IndexSettings) -> None:
    """Start every pooled connection with the service's index-scan settings.

    A request with the default ef_search then needs no SET round trip; a request
    that tunes it SETs it LOCAL to its own transaction. The values come from
    validated settings (an int and a literal), so formatting them in is safe.
    """
    # The generic plan of a search is the custom one (an index scan ordered by distance under a
    # LIMIT), and reusing it saves about 0.5 ms of planning per request, as long as the search
    # itself; the planner's "auto" mode keeps re-planning, since a LIMIT it cannot see makes the
    # generic plan look dearer.
    defaults = (
        f"SELECT set_config('hnsw.ef_search', '{int(index.ef_search)}', false),"
        f" set_config('hnsw.iterative_scan', '{index.iterative_scan}', false),"
        f" set_config('hnsw.max_scan_tuples', '{int(index.max_scan_tuples)}', false),"
        " set_config('plan_cache_mode', 'force_generic_plan', false)"
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _defaults(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(defaults)
        cursor.close()
        # Committed, or the pool's reset (a rollback) would undo the settings.
        dbapi_connection.commit()


def search_sql(query: Query, *, exact: bool) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of one search (exposed so tests can EXPLAIN it)."""
    clauses: list[str] = []
    params: dict[str, Any] = {
        "exclude_ids": list(query.exclude_ids),
        "exclude_names": list(query.exclude_names),
        "limit": query.limit,
    }
    flt = query.filter
    tempo = "(sp.quantitative_params->>'tempo_avg')::float8"
    if flt.tempo_min is not None:
        clauses.append(f"AND {tempo} >= :tempo_min")
        params["tempo_min"] = flt.tempo_min
    if flt.tempo_max is not None:
        clauses.append(f"AND {tempo} <= :tempo_max")
        params["tempo_max"] = flt.tempo_max
    if flt.research_status is not None:
        clauses.append("AND a.research_status = :research_status")
        params["research_status"] = flt.research_status
    if query.source_name is not None:
        vector = _SOURCE_VECTOR
        params["source"] = query.source_name
        params["exclude_names"].append(query.source_name)
    else:
        vector = _GIVEN_VECTOR
        params["q"] = query.vector
    distance = f"sp.embedding <=> {vector}"
    sql = _SEARCH_SQL.format(
        vector=vector,
        distance=f"({distance}) + 0" if exact else distance,
        filters="\n      ".join(clauses),
    )
    return sql, params


class SimilaritySearch:
    """The search primitives, each run inside a caller's transaction (session)."""

    def __init__(self, index: IndexSettings) -> None:
        self.index = index

    async def tune(self, session: AsyncSession, ef_search: int | None) -> int:
        """SET LOCAL ef_search when it differs from the connection's default; returns it."""
        ef = ef_search or self.index.ef_search
        if ef != self.index.ef_search:
            await session.execute(
                text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef)}
            )
        return ef

    async def index_scan(self, db: Database, query: Query, time_left: float | None) -> list[Match]:
        """The index scan alone, one statement outside a transaction on a connection that
        already has the service's index settings: the common request's whole path."""
        sql, params = search_sql(query, exact=False)
        rows = await db.fetch(*positional(sql, params), time_left=time_left)
        return [Match(row["id"], row["name"], float(row["similarity"])) for row in rows]

    def is_default(self, query: Query) -> bool:
        """True when the query needs nothing set on its connection first."""
        tuning = query.tuning
        return not tuning.exact and tuning.ef_search in (None, self.index.ef_search)

    async def nearest(
        self, session: AsyncSession, query: Query, *, index_rows: list[Match] | None = None
    ) -> list[Match]:
        """Index search; exact search when asked, or when the index came back short.

        Iterative scans keep a filtered query going until max_scan_tuples; a filter
        selective enough to exhaust that comes back with fewer than `limit` rows, and
        then the exact scan (which only computes distances for rows that pass the
        filter) returns every match there is. An empty answer for a source artist
        may instead mean the artist cannot be searched from: the lookup says which.
        index_rows is the answer of an index scan the caller already ran.
        """
        rows: list[Match] = index_rows or []
        if not query.tuning.exact and index_rows is None:
            await self.tune(session, query.tuning.ef_search)
            rows = await self.scan(session, query, exact=False)
        if len(rows) >= query.limit:
            return rows
        if not rows and query.source_name is not None:
            await self.embeddings_of(session, [query.source_name])
        return await self.scan(session, query, exact=True)

    async def scan(self, session: AsyncSession, query: Query, *, exact: bool) -> list[Match]:
        sql, params = search_sql(query, exact=exact)
        result = await session.execute(text(sql), params)
        return [Match(row.id, row.name, float(row.similarity)) for row in result]

    async def embeddings_of(
        self, session: AsyncSession, names: Sequence[str]
    ) -> dict[str, StoredEmbedding]:
        """The stored embedding of each named artist.

        Unknown artist: ArtistNotFound; no profile, or a profile without an
        embedding: FailedPrecondition, since the search cannot start from it.
        """
        result = await session.execute(_LOOKUP_SQL, {"names": list(names)})
        rows = {row.name: row for row in result}
        found: dict[str, StoredEmbedding] = {}
        for name in names:
            row = rows.get(name)
            if row is None:
                raise ArtistNotFound(name)
            if not row.has_profile:
                raise FailedPrecondition(f"artist '{name}' has no style profile to search from")
            if row.embedding is None:
                raise FailedPrecondition(
                    f"artist '{name}' has a style profile without an embedding to search from"
                )
            found[name] = StoredEmbedding(row.id, name, row.embedding)
        return found


def recommendation_vector(
    positives: Sequence[StoredEmbedding], negatives: Sequence[StoredEmbedding]
) -> str:
    """Mean of the unit-length positives minus the mean of the unit-length negatives.

    Each embedding is normalised first so every input artist weighs the same in
    the cosine query, whatever the norm it was stored with.
    """

    def unit_mean(items: Sequence[StoredEmbedding]) -> np.ndarray[Any, np.dtype[np.float64]]:
        vectors = np.stack([parse_vector(item.vector) for item in items])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        mean: np.ndarray[Any, np.dtype[np.float64]] = vectors.mean(axis=0)
        return mean

    query = unit_mean(positives)
    if negatives:
        query = query - unit_mean(negatives)
    if float(np.linalg.norm(query)) < 1e-9:
        raise InvalidArgument(
            "negative_artists", "cancel the positive artists out: the query vector has zero norm"
        )
    return vector_literal(query)
