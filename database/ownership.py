"""Whose database is this: a writer checks an existing database's tables before it creates anything in it.

`not_ours(inspector, ours, marker, version)` reads the table and view names (and the columns of CoInfer's
tables) and returns why the database is not CoInfer's, or "" when it is:

- no table and no view: a new database (an empty file, a new server database), CoInfer's to create;
- a view, or a table that is neither CoInfer's nor Optuna's (the build studies' tables live beside ours in
  a server database): another program's;
- the marker table (`marker`, written when CoInfer creates a database) holding a schema version above
  `version`: a newer CoInfer's, whose tables this one would misread;
- without the marker (a database created before it, such as the shipped one): at least one of CoInfer's
  tables; Optuna's tables alone are a study database, not ours;
- one of CoInfer's tables without all of its columns (another program's table of the same name).

Only reads: a database refused here is left byte-identical (`database.store.Store` raises before its first
write). SQLite's own tables (`sqlite_sequence`, ...) are not listed by the inspector.
"""

from __future__ import annotations

import sqlalchemy as sa

# Optuna's RDB storage (optuna.storages._rdb.models, and alembic's version table): the build queue and the
# searches' studies may share a server database with CoInfer's tables
OPTUNA_TABLES = frozenset({
    "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
    "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
    "trial_user_attributes", "trial_values", "trials", "version_info"})


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(items)[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def not_ours(conn: sa.Connection, ours: dict[str, sa.Table], marker: sa.Table, version: int) -> str:
    """Why the database behind `conn` is not CoInfer's ("" when it is, or is empty); see the module doc.
    `ours`: CoInfer's tables by name, the marker among them; `version`: the newest schema this code reads."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    views = inspector.get_view_names()
    if views:
        return f"it has views ({_names(views)})"
    if not tables:
        return ""
    unknown = sorted(tables - set(ours) - OPTUNA_TABLES)
    if unknown:
        return f"it has tables CoInfer does not make ({_names(unknown)})"
    mine = tables & set(ours)
    if not mine:
        return f"it holds only Optuna's tables ({_names(sorted(tables))}), none of CoInfer's"
    for name in sorted(mine):
        have = {c["name"] for c in inspector.get_columns(name)}
        missing = [c.name for c in ours[name].columns if c.name not in have]
        if missing:
            return f"its table {name} lacks CoInfer's columns {_names(missing)}"
    if marker.name in mine:
        found = conn.execute(sa.select(sa.func.max(marker.c.version))).scalar()
        if found is None or not isinstance(found, int):
            return f"its {marker.name} table holds no schema version"
        if found > version:
            return f"a newer CoInfer made it (schema version {found}; this one reads up to {version})"
    return ""
