"""lot_holds: quality holds on lot codes (who, why, when; released holds kept as history)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'lot_holds',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('lot', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('held_by', sa.String(length=64), nullable=False),
        sa.Column('held_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('released_by', sa.String(length=64), nullable=True),
        sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('release_reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_lot_holds')),
    )
    op.create_index(op.f('ix_lot_holds_lot'), 'lot_holds', ['lot'])
    # one active hold per lot code
    op.create_index('uq_lot_holds_active_lot', 'lot_holds', ['lot'], unique=True,
                    sqlite_where=sa.text('released_at IS NULL'), postgresql_where=sa.text('released_at IS NULL'))


def downgrade() -> None:
    op.drop_index('uq_lot_holds_active_lot', table_name='lot_holds')
    op.drop_index(op.f('ix_lot_holds_lot'), table_name='lot_holds')
    op.drop_table('lot_holds')
