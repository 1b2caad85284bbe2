"""Folds of the log: ``flow_runs``, ``flow_steps``, the analytics views, and their rebuild.

``Projector`` rides in the log's batch transaction (``events.log.Projector``); the fold itself
(``projections.fold``) is pure and shared by the incremental path and ``rebuild``.
"""

from projections.analytics import ALL_VIEWS, LOG_VIEWS, VIEWS, analytics
from projections.fold import fold, fold_all, fold_run, fold_step, tally
from projections.projector import Projector, RebuildResult, rebuild
from projections.queries import get_run, get_steps, list_runs
from projections.rows import RunRow, StepRow
from projections.sql import QueryResult, ReadOnlyViolation, readonly_query

__all__ = [
    "ALL_VIEWS",
    "LOG_VIEWS",
    "Projector",
    "QueryResult",
    "ReadOnlyViolation",
    "RebuildResult",
    "RunRow",
    "StepRow",
    "VIEWS",
    "analytics",
    "fold",
    "fold_all",
    "fold_run",
    "fold_step",
    "get_run",
    "get_steps",
    "list_runs",
    "readonly_query",
    "rebuild",
    "tally",
]
