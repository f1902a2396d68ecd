"""telemetry_readings without a primary key (samples' key already makes readings unique)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("pk_telemetry_readings", "telemetry_readings", type_="primary")  # and its partitions'
    else:
        with op.batch_alter_table("telemetry_readings", recreate="always") as batch_op:
            batch_op.drop_constraint("pk_telemetry_readings", type_="primary")


def downgrade() -> None:
    columns = ["ts", "device", "seq", "kind", "compartment"]
    if op.get_bind().dialect.name == "postgresql":
        op.create_primary_key("pk_telemetry_readings", "telemetry_readings", columns)
    else:
        with op.batch_alter_table("telemetry_readings", recreate="always") as batch_op:
            batch_op.create_primary_key("pk_telemetry_readings", columns)
