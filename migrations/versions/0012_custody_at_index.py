"""custody_events (at, id): a period's custody (FSMA 204 and EPCIS exports by date range) read in time
order by keyset pages instead of a full scan and sort per page

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('custody_events') as batch:
        batch.create_index('ix_custody_events_at_id', ['at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('custody_events') as batch:
        batch.drop_index('ix_custody_events_at_id')
