"""Read-only SQL over the event database, for people (``orchestrator sql``) and the server.

The guard trusts DuckDB's own parser, not patterns over the text: ``extract_statements`` gives
each statement's type, and only a single SELECT, an EXPLAIN of one, or a PRAGMA that only
describes the catalog gets through. A SELECT is then read back as DuckDB's syntax tree
(``json_serialize_sql``) and refused if it calls a table function outside a short list of
catalog and generator functions (which keeps out ``read_csv('/etc/passwd')``, ``glob``,
``query('…')`` and ``checkpoint()``), names a table that looks like a file path (DuckDB would
scan the file), or calls ``nextval`` (the one scalar function that writes).

The query runs in a transaction that is rolled back, whatever it did. Callers add their own
wall: ``orchestrator sql`` opens the file ``read_only`` with external access disabled; through
the server (whose connection can write) the guard is the wall, so file access is refused there
by the syntax-tree check above rather than by a setting that would bind the whole log.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["QueryResult", "ReadOnlyViolation", "check_readonly", "readonly_query"]

# PRAGMAs that only describe the database.
READ_PRAGMAS = frozenset(
    {
        "collations",
        "database_list",
        "database_size",
        "functions",
        "metadata_info",
        "platform",
        "show",
        "show_databases",
        "show_tables",
        "show_tables_expanded",
        "storage_info",
        "table_info",
        "user_agent",
        "version",
    }
)

# Table functions a read-only query may call: the catalog, generators, JSON over values.
READ_TABLE_FUNCTIONS = frozenset(
    {
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_settings",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "generate_series",
        "json_each",
        "json_tree",
        "pragma_collations",
        "pragma_database_size",
        "pragma_metadata_info",
        "pragma_platform",
        "pragma_show",
        "pragma_storage_info",
        "pragma_table_info",
        "pragma_user_agent",
        "pragma_version",
        "range",
        "repeat",
        "unnest",
    }
)

WRITING_FUNCTIONS = frozenset({"nextval"})
_PATHLIKE = set("./\\:*?~")


class ReadOnlyViolation(ValueError):
    """The query would write, or reach outside the database; nothing was run."""


class QueryResult(msgspec.Struct, frozen=True):
    """A read-only query's answer: column names, DuckDB type names and rows."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = False  # more rows than ``max_rows`` matched


def check_readonly(con: Any, sql: str) -> str:
    """The single statement of ``sql`` if it only reads; else raise ``ReadOnlyViolation``.

    A statement DuckDB cannot parse raises DuckDB's ``ParserException``.
    """
    import duckdb

    statements = con.extract_statements(sql)
    if not statements:
        raise ReadOnlyViolation("refused: the query is empty")
    if len(statements) > 1:
        raise ReadOnlyViolation(
            f"refused: {len(statements)} statements; run one read-only statement at a time"
        )
    statement = statements[0]
    text = statement.query.strip()
    verb = text.split(None, 1)[0].upper() if text else ""
    try:
        kind = statement.type
    except ValueError:
        # The parser knows the statement but the Python binding has no name for its type
        # (e.g. UPDATE EXTENSIONS): not something a read-only query is.
        raise ReadOnlyViolation(f"refused: {verb} is not a read-only statement") from None
    if kind == duckdb.StatementType.SELECT:
        _check_tree(con, text)
    elif kind == duckdb.StatementType.EXPLAIN:
        _check_explain(con, text)
    elif kind == duckdb.StatementType.PRAGMA:
        name = _pragma_name(text)
        if name not in READ_PRAGMAS:
            shown = f"PRAGMA {name}" if name else verb
            raise ReadOnlyViolation(f"refused: {shown} is not read-only")
    else:
        raise ReadOnlyViolation(
            f"refused: {verb} is not read-only (statement type {kind.name}); only SELECT, "
            "EXPLAIN SELECT and PRAGMAs that describe the catalog run here"
        )
    return text


def readonly_query(con: Any, sql: str, *, max_rows: int | None = None) -> QueryResult:
    """Run one read-only statement on ``con`` and return its rows.

    ``con`` must not be inside a transaction (give it a fresh cursor): the query runs in its
    own, which is rolled back. Raises ``ReadOnlyViolation`` (nothing run) or DuckDB's error.
    """
    text = check_readonly(con, sql)
    con.execute("BEGIN TRANSACTION")
    try:
        cur = con.execute(text)
        description = cur.description or []
        if max_rows is None:
            rows = cur.fetchall()
            truncated = False
        else:
            rows = cur.fetchmany(max_rows + 1)
            truncated = len(rows) > max_rows
            rows = rows[:max_rows]
    finally:
        con.execute("ROLLBACK")
    return QueryResult(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=[list(r) for r in rows],
        truncated=truncated,
    )


def _pragma_name(text: str) -> str:
    head, _, rest = text.partition(" ")
    if head.lower() != "pragma":
        return ""
    name = rest.strip()
    for i, ch in enumerate(name):
        if not (ch.isalnum() or ch == "_"):
            return name[:i].lower()
    return name.lower()


def _check_explain(con: Any, text: str) -> None:
    """EXPLAIN [ANALYZE] of a SELECT only (EXPLAIN ANALYZE runs the statement it explains)."""
    import duckdb

    rest = text[len("explain") :].lstrip()
    if rest[:7].lower() in ("analyze", "analyse"):
        rest = rest[7:]
    try:
        inner = con.extract_statements(rest)
    except (ValueError, duckdb.Error):
        inner = []
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation("refused: EXPLAIN is allowed for a single SELECT only")
    _check_tree(con, inner[0].query.strip())


def _check_tree(con: Any, text: str) -> None:
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if tree.get("error"):
        raise ReadOnlyViolation(
            f"refused: the query could not be checked ({tree.get('error_message', 'unknown')})"
        )
    for node in _nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = (node.get("function") or {}).get("function_name", "").lower()
            if name not in READ_TABLE_FUNCTIONS:
                raise ReadOnlyViolation(
                    f"refused: table function {name}() may read files or change state"
                )
        elif kind in ("BASE_TABLE", "SHOW_REF"):
            name = node.get("table_name") or ""
            if _PATHLIKE & set(name):
                raise ReadOnlyViolation(
                    f"refused: {name!r} names a file; only the database's tables can be read"
                )
        elif node.get("class") == "FUNCTION":
            if node.get("function_name", "").lower() in WRITING_FUNCTIONS:
                raise ReadOnlyViolation(
                    f"refused: {node['function_name']}() changes a sequence"
                )


def _nodes(value: Any):
    """Every JSON object in the tree, depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
