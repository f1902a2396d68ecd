"""kept_risks: an order's risk check as one API worker last assessed it, which the other workers take while
its inputs hold instead of assessing it again (traceability.trace.order_risks)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'kept_risks',
        sa.Column('order_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('inputs', sa.String(length=400), nullable=False),
        sa.Column('spoilage', sa.JSON(), nullable=False),
        sa.Column('breakage', sa.JSON(), nullable=False),
        sa.Column('aboard', sa.Boolean(), nullable=False),
        sa.Column('assessed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('order_id', name=op.f('pk_kept_risks')),
    )


def downgrade() -> None:
    op.drop_table('kept_risks')
