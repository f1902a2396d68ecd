"""telemetry: samples, readings (partitioned by day on PostgreSQL), rejects, alerts, rule state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_samples",
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], name=op.f("fk_telemetry_samples_vehicle_id_vehicles")),
        sa.PrimaryKeyConstraint("device", "seq", name=op.f("pk_telemetry_samples")),
    )
    columns = [
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("compartment", sa.String(length=16), nullable=False),
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("value2", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("ts", "device", "seq", "kind", "compartment", name=op.f("pk_telemetry_readings")),
    ]
    if op.get_bind().dialect.name == "postgresql":
        op.create_table("telemetry_readings", *columns, postgresql_partition_by="RANGE (ts)")
    else:
        op.create_table("telemetry_readings", *columns)
    op.create_index("ix_telemetry_readings_vehicle_kind_ts", "telemetry_readings",
                    ["vehicle_id", "kind", "compartment", "ts"])
    op.create_table(
        "telemetry_rejects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("batch_index", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_rejects")),
    )
    op.create_index(op.f("ix_telemetry_rejects_received_at"), "telemetry_rejects", ["received_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("compartment", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("peak", sa.Float(), nullable=True),
        sa.Column("minutes_out", sa.Float(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], name=op.f("fk_alerts_vehicle_id_vehicles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("key", name=op.f("uq_alerts_key")),
    )
    op.create_index("ix_alerts_status_started", "alerts", ["status", "started_at"])
    op.create_index(op.f("ix_alerts_vehicle_id"), "alerts", ["vehicle_id"])
    op.create_table(
        "vehicle_rule_state",
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sample_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], name=op.f("fk_vehicle_rule_state_vehicle_id_vehicles")),
        sa.PrimaryKeyConstraint("vehicle_id", name=op.f("pk_vehicle_rule_state")),
    )


def downgrade() -> None:
    op.drop_table("vehicle_rule_state")
    op.drop_index(op.f("ix_alerts_vehicle_id"), table_name="alerts")
    op.drop_index("ix_alerts_status_started", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index(op.f("ix_telemetry_rejects_received_at"), table_name="telemetry_rejects")
    op.drop_table("telemetry_rejects")
    op.drop_index("ix_telemetry_readings_vehicle_kind_ts", table_name="telemetry_readings")
    op.drop_table("telemetry_readings")  # drops its day partitions with it on PostgreSQL
    op.drop_table("telemetry_samples")
