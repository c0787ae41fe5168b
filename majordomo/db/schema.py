# -*- test-case-name: tests.test_cli -*-
"""C{majordomo db init}: create the database if it is missing, then apply schema.sql."""

from __future__ import annotations

from importlib import resources
from typing import Any

from psycopg2 import sql

from majordomo.config import PostgresConfig
from majordomo.db import Database

MAINTENANCE_DATABASE = "postgres"


def schema_sql() -> str:
    """The whole schema, as shipped in the package (idempotent)."""
    return resources.files("majordomo").joinpath("schema.sql").read_text(encoding="utf-8")


async def create_database_if_missing(reactor: Any, config: PostgresConfig) -> bool:
    """Create C{config.database}; True if it had to be created."""
    admin = Database(config, reactor=reactor, database=MAINTENANCE_DATABASE, pool_size=1)
    try:
        await admin.connect_once()
        rows = await admin.run_query(
            "SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)
        )
        if rows:
            return False
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config.database))
        await admin.run_operation(statement.as_string(admin.raw_connection()))
        return True
    finally:
        admin.close()


async def apply_schema(reactor: Any, config: PostgresConfig) -> bool:
    """Make sure the database exists and has every table; True if it was created."""
    created = await create_database_if_missing(reactor, config)
    db = Database(config, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        await db.run_operation(schema_sql())
    finally:
        db.close()
    return created
