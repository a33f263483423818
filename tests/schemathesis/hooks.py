"""Schemathesis hooks for tests/schemathesis.rs.

Two facts of the contract lie outside what a schema can say: a room's
`scheduledDeletion` (and `readOnlyAt`) must lie in the future, and the future moves; and an
event-log cursor (`GET /v1/events?after=`) must name an event that exists
(see `_cursor`). A case
that schemathesis generated as valid but whose deletion time has already
passed (or is due within the hour) is moved forward by whole 400-year
cycles until it is ahead: the Gregorian calendar repeats every 400 years,
so a February 29 stays a valid date and the time stays as generated. The
document allows times up to the year 9999. Invalid (negative) cases are
left as they are: the server must refuse them anyway.
"""

import ast
import datetime
import math
import threading
import time

import schemathesis
from schemathesis import GenerationMode

# CPython 3.11 keeps the AST constructor's recursion counter per
# interpreter, not per thread, so two threads parsing at once can fail with
# "AST constructor recursion depth mismatch" (python/cpython#106905).
# Hypothesis parses source to describe the strategies it builds, and the
# run uses two workers: parse one at a time.
_PARSE_LOCK = threading.Lock()
_parse = ast.parse


def _parse_alone(*args, **kwargs):
    with _PARSE_LOCK:
        return _parse(*args, **kwargs)


ast.parse = _parse_alone

# 400 Gregorian years: 146,097 days.
CYCLE_YEARS = 400
CYCLE_SECONDS = 146_097 * 86_400
# A time due this soon could pass before the request arrives.
MARGIN_SECONDS = 3_600


def _cycles(behind_seconds):
    return max(1, math.ceil(behind_seconds / CYCLE_SECONDS))


def _later(value):
    """The same deletion time, moved into the future when it is not there."""
    soon = time.time() + MARGIN_SECONDS
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if value > soon:
            return value
        return value + _cycles(soon - value) * CYCLE_SECONDS
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            return value
        if parsed.tzinfo is None or parsed.timestamp() > soon:
            return value
        # Years before 1 cannot be written; two cycles more keep clear of the 400-year rounding.
        cycles = _cycles(soon - parsed.timestamp()) + 1
        year = parsed.year + cycles * CYCLE_YEARS
        return f"{year:04d}" + value[4:]
    return value


def _move(case):
    body = case.body
    # readOnlyAt follows the same rule as scheduledDeletion.
    for field in ("scheduledDeletion", "readOnlyAt"):
        if isinstance(body, dict) and body.get(field) is not None:
            body[field] = _later(body[field])


# The fixtures write more events than this before the run starts.
EVENTS_BEFORE_THE_RUN = 16
# Longest long poll of a valid case, in seconds: a case waits this long when
# no event follows its cursor, and thousands of cases must fit in the run.
LONGEST_WAIT = 2


def _cursor(case):
    """A valid `GET /v1/events` cursor names an event that exists: one from
    the future is refused (400) however well-formed, as a past deletion time
    is. Valid cursors are kept among the events written before the run, and
    long polls short."""
    if case.operation.path != "/v1/events" or not isinstance(case.query, dict):
        return
    after = _integer(case.query.get("after"))
    if after is not None and after >= 0:
        case.query["after"] = after % EVENTS_BEFORE_THE_RUN
    wait = _integer(case.query.get("wait"))
    if wait is not None and wait > LONGEST_WAIT:
        case.query["wait"] = LONGEST_WAIT


def _integer(value):
    """A query value as the integer it stands for (phases send numbers or their text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


@schemathesis.hook
def map_case(context, case):
    """Generated cases (coverage and fuzzing phases): the valid ones."""
    meta = case.meta
    if meta is not None and meta.generation.mode == GenerationMode.POSITIVE:
        _move(case)
    # The stateful phase's cases carry no generation mode; they are valid ones.
    if meta is None or meta.generation.mode == GenerationMode.POSITIVE:
        _cursor(case)
    return case


@schemathesis.hook
def before_add_examples(context, examples):
    """The examples phase: cases built from the document's examples, all meant valid."""
    for case in examples:
        _move(case)
        _cursor(case)
