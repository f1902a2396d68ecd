"""routes.trip: a van's second and later trips of the day are routes of their own

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('routes') as batch:
        batch.add_column(sa.Column('trip', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('routes') as batch:
        batch.drop_column('trip')
