"""analytics rollups, per-artist generation counts and the read-only role

Revision ID: c2e1d3b8f5a6
Revises: a86af6571aac
Create Date: 2026-11-23

Statement-level triggers on generation_history keep the rollups in the inserting
transaction, whatever inserts (one row, a multi-row INSERT, a COPY), so GetStats
reads rollups and never the history table. History is append-only: a row's
measures cannot change, so the rollups cannot drift.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "c2e1d3b8f5a6"
down_revision: str | Sequence[str] | None = "a86af6571aac"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READONLY_ROLE = "stylebase_readonly"
LEVELS = "'minute', 'hour', 'day', 'month', 'all'"

# Histogram slot of a generation time: 0 for 0 ms, else 1 + ceil(log_gamma(ms)) with
# gamma = 1.01 / 0.99, so a slot's representative is within 1 % of every value in it.
# services/analytics/stats.py holds the same constants.
SLOT_FUNCTION = """
CREATE FUNCTION generation_time_slot(ms integer) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (CASE WHEN ms <= 0 THEN 0
          ELSE 1 + ceil(ln(ms::double precision) / ln(1.01 / 0.99))::integer END)::smallint
$$
"""

# The buckets a row counts in; 'all' is one bucket per provider for the whole history.
# Buckets are UTC, whatever the session's time zone.
BUCKETS_FUNCTION = """
CREATE FUNCTION generation_rollup_buckets(ts timestamptz)
RETURNS TABLE (level text, bucket_start timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  VALUES ('minute', date_trunc('minute', ts, 'UTC')),
         ('hour', date_trunc('hour', ts, 'UTC')),
         ('day', date_trunc('day', ts, 'UTC')),
         ('month', date_trunc('month', ts, 'UTC')),
         ('all', '-infinity'::timestamptz)
$$
"""

# Transition tables are visible only inside the trigger's own function, so the body is
# a template over the table name and the sign (+1 for inserts, -1 for deletes). Rows are
# written in one global order (ORDER BY the key) so concurrent writers never deadlock.
ROLLUP_TEMPLATE = """
  INSERT INTO generation_rollups AS r
    (level, bucket_start, provider, generations, sum_time_ms, sum_cost_usd, sum_tokens)
  SELECT b.level, b.bucket_start, d.provider_used, {sign} * count(*),
         {sign} * sum(d.generation_time_ms), {sign} * sum(coalesce(d.cost_usd, 0)::numeric),
         {sign} * sum(coalesce(d.tokens_used, 0))
  FROM {rows} d CROSS JOIN LATERAL generation_rollup_buckets(d.created_at) b
  GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (level, bucket_start, provider) DO UPDATE SET
    generations = r.generations + EXCLUDED.generations,
    sum_time_ms = r.sum_time_ms + EXCLUDED.sum_time_ms,
    sum_cost_usd = r.sum_cost_usd + EXCLUDED.sum_cost_usd,
    sum_tokens = r.sum_tokens + EXCLUDED.sum_tokens;
"""
HISTOGRAM_TEMPLATE = """
  INSERT INTO generation_rollup_histogram AS h (level, bucket_start, provider, slot, generations)
  SELECT b.level, b.bucket_start, d.provider_used, generation_time_slot(d.generation_time_ms),
         {sign} * count(*)
  FROM {rows} d CROSS JOIN LATERAL generation_rollup_buckets(d.created_at) b
  GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
  ON CONFLICT (level, bucket_start, provider, slot) DO UPDATE SET
    generations = h.generations + EXCLUDED.generations;
"""

COUNT_UP = """
  INSERT INTO artist_generation_counts AS c (artist_id, generations)
  SELECT artist_id, count(*) FROM {rows} WHERE artist_id IS NOT NULL GROUP BY 1 ORDER BY 1
  ON CONFLICT (artist_id) DO UPDATE SET generations = c.generations + EXCLUDED.generations;
"""

# A plain UPDATE: when the artist itself is being deleted its counter may be gone already.
COUNT_DOWN = """
  UPDATE artist_generation_counts c SET generations = c.generations - x.n
  FROM (SELECT artist_id, count(*) AS n FROM {rows} WHERE artist_id IS NOT NULL
        GROUP BY 1 ORDER BY 1) x
  WHERE c.artist_id = x.artist_id;
"""


# Set-based build of empty rollups from the raw rows: one pass over the history into
# minute buckets, then each level from the one below. The migration backfills rows logged
# before it with these; the benchmark builds its bulk-loaded rollups with them too. Rows go
# in key order, so the primary-key indexes fill from the right instead of at random.
_COARSER = [("hour", "minute"), ("day", "hour"), ("month", "day")]
BACKFILL = [
    "INSERT INTO generation_rollups"
    " SELECT 'minute', date_trunc('minute', created_at, 'UTC'), provider_used, count(*),"
    " sum(generation_time_ms), sum(coalesce(cost_usd, 0)::numeric),"
    " sum(coalesce(tokens_used, 0)) FROM generation_history GROUP BY 2, 3 ORDER BY 2, 3",
    "INSERT INTO generation_rollup_histogram"
    " SELECT 'minute', date_trunc('minute', created_at, 'UTC'), provider_used,"
    " generation_time_slot(generation_time_ms), count(*) FROM generation_history"
    " GROUP BY 2, 3, 4 ORDER BY 2, 3, 4",
    *(
        statement
        for level, below in _COARSER
        for statement in (
            f"INSERT INTO generation_rollups SELECT '{level}',"
            f" date_trunc('{level}', bucket_start, 'UTC'), provider, sum(generations),"
            " sum(sum_time_ms), sum(sum_cost_usd), sum(sum_tokens) FROM generation_rollups"
            f" WHERE level = '{below}' GROUP BY 2, 3 ORDER BY 2, 3",
            f"INSERT INTO generation_rollup_histogram SELECT '{level}',"
            f" date_trunc('{level}', bucket_start, 'UTC'), provider, slot, sum(generations)"
            f" FROM generation_rollup_histogram WHERE level = '{below}'"
            " GROUP BY 2, 3, 4 ORDER BY 2, 3, 4",
        )
    ),
    "INSERT INTO generation_rollups SELECT 'all', '-infinity', provider, sum(generations),"
    " sum(sum_time_ms), sum(sum_cost_usd), sum(sum_tokens) FROM generation_rollups"
    " WHERE level = 'month' GROUP BY 3",
    "INSERT INTO generation_rollup_histogram SELECT 'all', '-infinity', provider, slot,"
    " sum(generations) FROM generation_rollup_histogram WHERE level = 'month' GROUP BY 3, 4",
    "INSERT INTO artist_generation_counts SELECT artist_id, count(*) FROM generation_history"
    " WHERE artist_id IS NOT NULL GROUP BY 1",
]


def _function(name: str, body: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{body}\n  RETURN NULL;\nEND\n$$"
    )


# An artist_id change (the foreign key's SET NULL when an artist is deleted) moves counts.
_CHANGED = (
    "FROM old_rows o JOIN new_rows n USING (id) WHERE o.artist_id IS DISTINCT FROM n.artist_id"
)
MOVED = f"(SELECT o.artist_id {_CHANGED})"
ARRIVED = f"(SELECT n.artist_id {_CHANGED})"

FUNCTIONS = {
    "generation_history_inserted": "".join(
        t.format(sign="1", rows="new_rows") for t in (ROLLUP_TEMPLATE, HISTOGRAM_TEMPLATE, COUNT_UP)
    ),
    "generation_history_deleted": "".join(
        t.format(sign="-1", rows="old_rows")
        for t in (ROLLUP_TEMPLATE, HISTOGRAM_TEMPLATE, COUNT_DOWN)
    ),
    "generation_history_reassigned": COUNT_DOWN.format(rows=f"{MOVED} AS moved")
    + COUNT_UP.format(rows=f"{ARRIVED} AS arrived"),
    # DELETE, not TRUNCATE: the truncating statement may name these tables too.
    "generation_history_truncated": "  DELETE FROM generation_rollups;"
    " DELETE FROM generation_rollup_histogram; DELETE FROM artist_generation_counts;",
}

APPEND_ONLY = """
CREATE FUNCTION generation_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'generation_history is append-only: only artist_id may change'
    USING ERRCODE = 'restrict_violation';
END
$$
"""

TRIGGERS = [
    "CREATE TRIGGER generation_history_rollup_insert AFTER INSERT ON generation_history"
    " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION generation_history_inserted()",
    "CREATE TRIGGER generation_history_rollup_delete AFTER DELETE ON generation_history"
    " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION generation_history_deleted()",
    "CREATE TRIGGER generation_history_rollup_update AFTER UPDATE ON generation_history"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION generation_history_reassigned()",
    "CREATE TRIGGER generation_history_rollup_truncate AFTER TRUNCATE ON generation_history"
    " FOR EACH STATEMENT EXECUTE FUNCTION generation_history_truncated()",
    "CREATE TRIGGER generation_history_append_only BEFORE UPDATE ON generation_history"
    " FOR EACH ROW WHEN ((OLD.id, OLD.provider_used, OLD.generation_time_ms, OLD.tokens_used,"
    " OLD.cost_usd, OLD.user_params, OLD.output_files, OLD.created_at) IS DISTINCT FROM"
    " (NEW.id, NEW.provider_used, NEW.generation_time_ms, NEW.tokens_used, NEW.cost_usd,"
    " NEW.user_params, NEW.output_files, NEW.created_at))"
    " EXECUTE FUNCTION generation_history_append_only()",
]

# Cluster-wide role: created only when missing, since several databases of one cluster
# (or a re-run) may migrate; grants are per database.
CREATE_ROLE = f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READONLY_ROLE}') THEN
    CREATE ROLE {READONLY_ROLE} LOGIN;
  END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$
"""
GRANTS = [
    f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READONLY_ROLE}',"
    " current_database()); END $$",
    f"GRANT USAGE ON SCHEMA public TO {READONLY_ROLE}",
    f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READONLY_ROLE}",
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READONLY_ROLE}",
]
REVOKES = [
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {READONLY_ROLE}",
    f"REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {READONLY_ROLE}",
    f"REVOKE USAGE ON SCHEMA public FROM {READONLY_ROLE}",
    f"DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READONLY_ROLE}',"
    " current_database()); END $$",
]
# Another database of the cluster may still grant to the role: then it stays.
DROP_ROLE = f"""
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READONLY_ROLE}') THEN
    DROP ROLE {READONLY_ROLE};
  END IF;
EXCEPTION WHEN dependent_objects_still_exist THEN
  RAISE NOTICE 'role {READONLY_ROLE} kept: other databases still grant to it';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "generation_rollups",
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("generations", sa.BigInteger, nullable=False),
        sa.Column("sum_time_ms", sa.BigInteger, nullable=False),
        sa.Column("sum_cost_usd", sa.Numeric, nullable=False),
        sa.Column("sum_tokens", sa.Numeric, nullable=False),
        sa.PrimaryKeyConstraint("level", "bucket_start", "provider"),
        sa.CheckConstraint(f"level IN ({LEVELS})", name="ck_generation_rollups_level"),
    )
    op.create_table(
        "generation_rollup_histogram",
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(50), nullable=False),
        sa.Column("slot", sa.SmallInteger, nullable=False),
        sa.Column("generations", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("level", "bucket_start", "provider", "slot"),
        sa.CheckConstraint(f"level IN ({LEVELS})", name="ck_generation_rollup_histogram_level"),
    )
    op.create_table(
        "artist_generation_counts",
        sa.Column(
            "artist_id",
            UUID(as_uuid=True),
            sa.ForeignKey("artists.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("generations", sa.BigInteger, nullable=False),
    )
    op.execute(SLOT_FUNCTION)
    op.execute(BUCKETS_FUNCTION)
    for name, body in FUNCTIONS.items():
        op.execute(_function(name, body))
    op.execute(APPEND_ONLY)
    for statement in TRIGGERS:
        op.execute(statement)
    # Rows logged before this revision count too.
    for statement in BACKFILL:
        op.execute(statement)
    op.execute(CREATE_ROLE)
    for statement in GRANTS:
        op.execute(statement)


def downgrade() -> None:
    for statement in REVOKES:
        op.execute(statement)
    op.execute(DROP_ROLE)
    for trigger in (
        "generation_history_append_only",
        "generation_history_rollup_truncate",
        "generation_history_rollup_update",
        "generation_history_rollup_delete",
        "generation_history_rollup_insert",
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON generation_history")
    for function in (*FUNCTIONS, "generation_history_append_only"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.execute("DROP FUNCTION IF EXISTS generation_rollup_buckets(timestamptz)")
    op.execute("DROP FUNCTION IF EXISTS generation_time_slot(integer)")
    op.drop_table("artist_generation_counts")
    op.drop_table("generation_rollup_histogram")
    op.drop_table("generation_rollups")
