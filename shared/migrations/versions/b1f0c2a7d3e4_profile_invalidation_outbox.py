"""profile invalidation outbox

Revision ID: b1f0c2a7d3e4
Revises: a86af6571aac
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b1f0c2a7d3e4"
down_revision: str | Sequence[str] | None = "a86af6571aac"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per artist name: only the newest undelivered invalidation matters, so a
    # long gateway outage leaves at most one row per artist, not one per save.
    op.create_table(
        "profile_invalidation_outbox",
        sa.Column("artist_name", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_index(
        "ix_profile_invalidation_outbox_next_attempt_at",
        "profile_invalidation_outbox",
        ["next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_table("profile_invalidation_outbox")
