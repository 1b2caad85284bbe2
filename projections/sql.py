"""Read-only SQL over the event database, for people (``orchestrator sql``) and the server.

The guard trusts DuckDB's own parser, not patterns over the text: ``extract_statements`` gives
each statement's type, and only a single SELECT, an EXPLAIN of one, or a PRAGMA that only
describes the catalog gets through. A SELECT is then read back as DuckDB's syntax tree
(``json_serialize_sql``) and refused if:

- it calls a table function outside a short list of catalog and generator functions (which
  keeps out ``read_csv('/etc/passwd')``, ``glob``, ``query('…')`` and ``checkpoint()``);
- it names a table that is neither one of the database's tables or views nor one of the
  query's own ``WITH`` names. Any other name reaches DuckDB's replacement scans, which read
  files: ``"/home/me/secret".csv`` is parsed as schema ``/home/me/secret``, table ``csv``, and
  scanned as the file ``/home/me/secret.csv``;
- it calls a function that changes state or stalls (``nextval``, ``setval``, ``setseed``,
  ``sleep_ms``, ``write_log``, and macros over them such as ``pg_sleep``).

The query runs in a transaction that is rolled back, whatever it did, and is interrupted
after ``timeout`` seconds. Callers add their own wall: ``orchestrator sql`` opens the file
``read_only`` with external access disabled; through the server (whose connection can write)
the guard is the wall, so file access is refused there by the syntax-tree check above rather
than by a setting that would bind the whole log.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import msgspec

__all__ = ["QueryResult", "QueryTimedOut", "ReadOnlyViolation", "check_readonly", "readonly_query"]

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

# What ``SHOW <special>`` may name (the parser's names for the catalog listings).
SHOW_SPECIAL = frozenset(
    {'"databases"', '"schemas"', '"tables"', '"variables"', "__show_tables_expanded"}
)

# DuckDB marks functions whose result may change between calls VOLATILE; most of those
# change state or stall. These only read (or raise).
VOLATILE_READS = frozenset(
    {
        "current_connection_id",
        "current_query",
        "current_query_id",
        "current_transaction_id",
        "currval",
        "error",
        "gen_random_uuid",
        "random",
        "stats",
        "uuid",
        "uuidv4",
        "uuidv7",
        "vector_type",
    }
)
_PATHLIKE = set("./\\:*?~")
SERVER_MAX_ROWS = 100_000  # rows a query gets through the server at most (its answer goes whole)


class ReadOnlyViolation(ValueError):
    """The query would write, or reach outside the database; nothing was run."""


class QueryTimedOut(RuntimeError):
    """The query ran past its time bound and was interrupted; its transaction rolled back."""


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

    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:  # a shell argument of bytes that are not UTF-8
        raise ReadOnlyViolation("refused: the query is not UTF-8 text") from None
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
        text = _checked_explain(con, text)
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


def readonly_query(
    con: Any, sql: str, *, max_rows: int | None = None, timeout: float | None = None
) -> QueryResult:
    """Run one read-only statement on ``con`` and return its rows.

    ``con`` must not be inside a transaction (give it a fresh cursor): the query runs in its
    own, which is rolled back. Past ``timeout`` seconds it is interrupted. Raises
    ``ReadOnlyViolation`` (nothing run), ``QueryTimedOut``, or DuckDB's error.
    """
    import duckdb

    text = check_readonly(con, sql)
    deadline = _Deadline(con, timeout)
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
    except duckdb.InterruptException:
        if deadline.passed:
            raise QueryTimedOut(
                f"the query ran longer than {timeout:g} s and was stopped; narrow it "
                "(a WHERE, a LIMIT) or raise ORCH_SQL_TIMEOUT"
            ) from None
        raise
    finally:
        deadline.cancel()  # before the ROLLBACK, which must not be interrupted
        con.execute("ROLLBACK")
    return QueryResult(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=[list(r) for r in rows],
        truncated=truncated,
    )


class _Deadline:
    """Interrupts ``con`` once ``timeout`` seconds have passed, unless cancelled first."""

    def __init__(self, con: Any, timeout: float | None):
        self.passed = False
        self._con = con
        self._lock = threading.Lock()
        self._timer = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._timer is not None:
                self.passed = True
                self._con.interrupt()

    def cancel(self) -> None:
        with self._lock:  # a firing timer has interrupted already, or never will
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _pragma_name(text: str) -> str:
    head, _, rest = text.partition(" ")
    if head.lower() != "pragma":
        return ""
    name = rest.strip()
    for i, ch in enumerate(name):
        if not (ch.isalnum() or ch == "_"):
            return name[:i].lower()
    return name.lower()


def _checked_explain(con: Any, text: str) -> str:
    """EXPLAIN [ANALYZE] of a SELECT only (EXPLAIN ANALYZE runs the statement it explains).

    Returns the statement to run, rebuilt from the SELECT that was checked: run as given, a
    comment before EXPLAIN shifted what was checked away from what ran (a COPY went through).
    """
    import duckdb

    head = _without_leading_comments(text)
    if head[:7].lower() != "explain":
        raise ReadOnlyViolation("refused: EXPLAIN is allowed for a single SELECT only")
    rest = head[7:].lstrip()
    analyze = rest[:7].lower() in ("analyze", "analyse")
    if analyze:
        rest = rest[7:]
    try:
        inner = con.extract_statements(rest)
    except (ValueError, duckdb.Error):
        inner = []
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation("refused: EXPLAIN is allowed for a single SELECT only")
    query = inner[0].query.strip()
    _check_tree(con, query)
    return ("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + query


def _without_leading_comments(text: str) -> str:
    while True:
        text = text.lstrip()
        if text.startswith("--"):
            _, newline, text = text.partition("\n")
            if not newline:
                return ""
        elif text.startswith("/*"):
            _, close, text = text[2:].partition("*/")
            if not close:
                return ""
        else:
            return text


def _check_tree(con: Any, text: str) -> None:
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if tree.get("error"):
        raise ReadOnlyViolation(
            f"refused: the query could not be checked ({tree.get('error_message', 'unknown')})"
        )
    nodes = list(_nodes(tree))
    ctes = {
        entry["key"].lower()
        for node in nodes
        for entry in (node.get("cte_map") or {}).get("map", [])
    }
    relations = None
    for node in nodes:
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = (node.get("function") or {}).get("function_name", "").lower()
            if name not in READ_TABLE_FUNCTIONS:
                raise ReadOnlyViolation(
                    f"refused: table function {name}() may read files or change state"
                )
        elif kind == "SHOW_REF" and node.get("show_type") == "SHOW_SPECIAL":
            if node.get("table_name") not in SHOW_SPECIAL:
                raise ReadOnlyViolation("refused: only SHOW TABLES, SHOW ALL TABLES, SHOW "
                                        "DATABASES, SHOW SCHEMAS and SHOW VARIABLES run here")
        elif kind == "BASE_TABLE" or (kind == "SHOW_REF" and node.get("table_name")):
            # (A DESCRIBE or SUMMARIZE holds its query, whose tables are checked as nodes.)
            if relations is None:
                relations = _relations(con)
            _check_table(node, ctes, relations)
        elif node.get("class") == "FUNCTION":
            name = node.get("function_name", "").lower()
            if name in _stateful_functions(con):
                raise ReadOnlyViolation(f"refused: {name}() changes state or stalls the server")


def _check_table(node: dict, ctes: set[str], relations: set[tuple[str, str, str]]) -> None:
    """A table reference must be a WITH name of the query or a table or view of the database;
    any other name would go to DuckDB's replacement scans, which read files."""
    parts = [node.get(k) or "" for k in ("catalog_name", "schema_name", "table_name")]
    catalog, schema, table = (p.lower() for p in parts)
    shown = ".".join(p for p in parts if p)
    if any(_PATHLIKE & set(p) for p in parts):
        raise ReadOnlyViolation(
            f"refused: {shown!r} names a file; only the database's tables can be read"
        )
    if not catalog and not schema and table in ctes:
        return
    for c, s, t in relations:
        if t != table or (catalog and catalog != c):
            continue
        # ``a.b`` is schema a's table b, or catalog a's table b in its schema main.
        if not schema or schema == s or (not catalog and schema == c and s == "main"):
            return
    raise ReadOnlyViolation(
        f"refused: {shown!r} is not a table or view of the event database (only those and "
        "the query's own WITH names can be read)"
    )


def _relations(con: Any) -> set[tuple[str, str, str]]:
    """(catalog, schema, name) of every table and view, lower-cased."""
    rows = con.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        "UNION ALL SELECT database_name, schema_name, view_name FROM duckdb_views()"
    ).fetchall()
    return {(c.lower(), s.lower(), t.lower()) for c, s, t in rows}


_STATEFUL: frozenset[str] | None = None


def _stateful_functions(con: Any) -> frozenset[str]:
    """DuckDB's VOLATILE functions that do more than read, and the macros that call them
    (``pg_sleep`` is ``sleep_ms`` underneath; the syntax tree shows the macro's name)."""
    global _STATEFUL
    if _STATEFUL is None:
        rows = con.execute(
            "SELECT DISTINCT function_name, stability, macro_definition FROM duckdb_functions()"
        ).fetchall()
        volatile = {n.lower() for n, stability, _ in rows if stability == "VOLATILE"}
        stateful = volatile - VOLATILE_READS
        stateful |= {
            n.lower()
            for n, _, body in rows
            if body and any(f"{name}(" in body.lower() for name in stateful)
        }
        _STATEFUL = frozenset(stateful)
    return _STATEFUL


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
