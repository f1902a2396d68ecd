"""driver delivery: stop and route events, damage per line, proofs, phone positions, idempotency keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('driver_positions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('vehicle_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lon', sa.Float(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['drivers.id'], name=op.f('fk_driver_positions_driver_id_drivers')),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_driver_positions_vehicle_id_vehicles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_driver_positions'))
    )
    with op.batch_alter_table('driver_positions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_driver_positions_driver_id'), ['driver_id'], unique=False)
        batch_op.create_index('ix_driver_positions_vehicle_id_at', ['vehicle_id', 'at'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('response_headers', sa.JSON(), nullable=True),
    sa.Column('response_body', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['driver_id'], ['drivers.id'], name=op.f('fk_idempotency_keys_driver_id_drivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('driver_id', 'key', name=op.f('uq_idempotency_keys_driver_id_key'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index('ix_idempotency_keys_driver_id_created_at', ['driver_id', 'created_at'], unique=False)

    op.create_table('delivery_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('route_id', sa.Integer(), nullable=False),
    sa.Column('stop_pk', sa.Integer(), nullable=True),
    sa.Column('stop_id', sa.String(length=32), nullable=True),
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('vehicle_id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('recipient', sa.String(length=200), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['driver_id'], ['drivers.id'], name=op.f('fk_delivery_events_driver_id_drivers')),
    sa.ForeignKeyConstraint(['route_id'], ['routes.id'], name=op.f('fk_delivery_events_route_id_routes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['stop_pk'], ['route_stops.id'], name=op.f('fk_delivery_events_stop_pk_route_stops'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_delivery_events_vehicle_id_vehicles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_events'))
    )
    with op.batch_alter_table('delivery_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_events_driver_id'), ['driver_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_events_route_id'), ['route_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_events_stop_pk'), ['stop_pk'], unique=False)

    op.create_table('delivery_proofs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stop_pk', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['drivers.id'], name=op.f('fk_delivery_proofs_driver_id_drivers')),
    sa.ForeignKeyConstraint(['stop_pk'], ['route_stops.id'], name=op.f('fk_delivery_proofs_stop_pk_route_stops'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_proofs'))
    )
    with op.batch_alter_table('delivery_proofs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_proofs_driver_id'), ['driver_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_proofs_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_proofs_stop_pk'), ['stop_pk'], unique=False)

    op.create_table('stop_damages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('stop_pk', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('line_id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('qty > 0', name=op.f('ck_stop_damages_qty_positive')),
    sa.ForeignKeyConstraint(['event_id'], ['delivery_events.id'], name=op.f('fk_stop_damages_event_id_delivery_events'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['line_id'], ['order_lines.id'], name=op.f('fk_stop_damages_line_id_order_lines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_stop_damages_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_stop_damages_product_id_products')),
    sa.ForeignKeyConstraint(['stop_pk'], ['route_stops.id'], name=op.f('fk_stop_damages_stop_pk_route_stops'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stop_damages'))
    )
    with op.batch_alter_table('stop_damages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stop_damages_event_id'), ['event_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stop_damages_line_id'), ['line_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stop_damages_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stop_damages_stop_pk'), ['stop_pk'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('stop_damages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stop_damages_stop_pk'))
        batch_op.drop_index(batch_op.f('ix_stop_damages_order_id'))
        batch_op.drop_index(batch_op.f('ix_stop_damages_line_id'))
        batch_op.drop_index(batch_op.f('ix_stop_damages_event_id'))

    op.drop_table('stop_damages')
    with op.batch_alter_table('delivery_proofs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_proofs_stop_pk'))
        batch_op.drop_index(batch_op.f('ix_delivery_proofs_sha256'))
        batch_op.drop_index(batch_op.f('ix_delivery_proofs_driver_id'))

    op.drop_table('delivery_proofs')
    with op.batch_alter_table('delivery_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_events_stop_pk'))
        batch_op.drop_index(batch_op.f('ix_delivery_events_route_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_events_driver_id'))

    op.drop_table('delivery_events')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_idempotency_keys_driver_id_created_at')

    op.drop_table('idempotency_keys')
    with op.batch_alter_table('driver_positions', schema=None) as batch_op:
        batch_op.drop_index('ix_driver_positions_vehicle_id_at')
        batch_op.drop_index(batch_op.f('ix_driver_positions_driver_id'))

    op.drop_table('driver_positions')
