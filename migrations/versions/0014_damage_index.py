"""order_events: a partial index of damage reports by order, for the newest damage report of a van's orders
that every driver's route read looks up (a scan of the day's events otherwise)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_order_events_damaged', 'order_events', ['order_id'], unique=False,
                    postgresql_where=sa.text("type = 'damaged'"), sqlite_where=sa.text("type = 'damaged'"))


def downgrade() -> None:
    op.drop_index('ix_order_events_damaged', table_name='order_events')
