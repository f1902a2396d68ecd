"""audit log (append-only, hash-chained) and custody events

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Triggers refuse UPDATE and DELETE on audit_log (and TRUNCATE on PostgreSQL): the application
only appends (core/audit.py). A later SQLite batch migration that recreates audit_log must
create these triggers again.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('entity', sa.String(length=32), nullable=False),
    sa.Column('entity_id', sa.String(length=128), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('why', sa.Text(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_entity_entity_id', ['entity', 'entity_id'], unique=False)

    op.create_table('custody_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('vehicle_id', sa.Integer(), nullable=True),
    sa.Column('compartment', sa.String(length=16), nullable=True),
    sa.Column('route_id', sa.Integer(), nullable=True),
    sa.Column('stop_id', sa.Integer(), nullable=True),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('line_id', sa.Integer(), nullable=True),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('lot_id', sa.Integer(), nullable=True),
    sa.Column('lot', sa.String(length=64), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.CheckConstraint("type in ('received', 'picked', 'loaded', 'delivered', 'failed', 'returned', 'disposed')", name=op.f('ck_custody_events_type')),
    sa.CheckConstraint('qty > 0', name=op.f('ck_custody_events_qty_positive')),
    sa.ForeignKeyConstraint(['line_id'], ['order_lines.id'], name=op.f('fk_custody_events_line_id_order_lines')),
    sa.ForeignKeyConstraint(['lot_id'], ['stock_lots.id'], name=op.f('fk_custody_events_lot_id_stock_lots')),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_custody_events_node_id_nodes')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_custody_events_order_id_orders')),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_custody_events_product_id_products')),
    sa.ForeignKeyConstraint(['route_id'], ['routes.id'], name=op.f('fk_custody_events_route_id_routes')),
    sa.ForeignKeyConstraint(['stop_id'], ['route_stops.id'], name=op.f('fk_custody_events_stop_id_route_stops')),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_custody_events_vehicle_id_vehicles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_custody_events'))
    )
    with op.batch_alter_table('custody_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_custody_events_line_id'), ['line_id'], unique=False)
        batch_op.create_index('ix_custody_events_lot_at', ['lot', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_custody_events_lot_id'), ['lot_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_custody_events_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_custody_events_route_id'), ['route_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_custody_events_vehicle_id'), ['vehicle_id'], unique=False)
    _append_only()


PG_FUNCTION = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$"""


def _append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                   "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
        op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: {verb} refused'); END")


def downgrade() -> None:
    with op.batch_alter_table('custody_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_custody_events_vehicle_id'))
        batch_op.drop_index(batch_op.f('ix_custody_events_route_id'))
        batch_op.drop_index(batch_op.f('ix_custody_events_order_id'))
        batch_op.drop_index(batch_op.f('ix_custody_events_lot_id'))
        batch_op.drop_index('ix_custody_events_lot_at')
        batch_op.drop_index(batch_op.f('ix_custody_events_line_id'))

    op.drop_table('custody_events')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_entity_entity_id')

    op.drop_table('audit_log')  # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_append_only()")
