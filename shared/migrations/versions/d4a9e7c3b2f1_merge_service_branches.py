"""merge the profile store and analytics branches

Revision ID: d4a9e7c3b2f1
Revises: b1f0c2a7d3e4, c2e1d3b8f5a6
Create Date: 2026-11-22
"""

from collections.abc import Sequence

revision: str = "d4a9e7c3b2f1"
down_revision: str | Sequence[str] | None = ("b1f0c2a7d3e4", "c2e1d3b8f5a6")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both branches grew from a86af6571aac independently; this joins them into one head.
    pass


def downgrade() -> None:
    pass
