"""request log: the stored answers of writes sent with a client request_id (AIP-155)

Revision ID: e5b7c1d9a2f3
Revises: d4a9e7c3b2f1
Create Date: 2026-12-02

A write with a request_id stores its answer here in its own transaction, so the answer exists
exactly when the write committed, and a repeat of the request reads it instead of writing again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b7c1d9a2f3"
down_revision: str | Sequence[str] | None = "d4a9e7c3b2f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("rpc", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        # sha256 of the request without its request_id: a repeat must be the same request.
        sa.Column("request_hash", sa.LargeBinary, nullable=False),
        # The serialized response; NULL only inside the transaction that claimed the id.
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    # The pruner deletes the oldest rows first, a bounded number a round.
    op.create_index("ix_request_log_created_at", "request_log", ["created_at"])


def downgrade() -> None:
    op.drop_table("request_log")
