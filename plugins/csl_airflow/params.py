"""What a csl DAG's trigger accepts, in one place.

- **Patterns say the whole value.** ``full_match(body)`` anchors a JSON-schema ``pattern`` so it
  means the whole string: Airflow validates with Python's ``re.search``, where ``$`` also matches
  before a final newline (``"users\\n"`` passes ``^[a-z]+$``); ``(?!\\n)`` after ``$`` closes that
  and means nothing to an ECMA-262 reader (the UI), where ``$`` is already the end.
- **Optional means null-able.** The trigger form sends an emptied field as ``null``; an optional
  Param is ``type=["null", …]`` and the glue reads ``null`` as "not given".
- **Operators get the Param's value, not its text.** ``param("dry_run")`` as an operator argument
  is replaced, when the task renders its fields, by the run's validated value (``False``, ``[]``,
  ``None``, ``7000``): no ``"{{ params.x }}"`` rendered to a string and parsed back.
- **Only declared keys, only finite numbers.** Airflow turns a ``conf`` key no Param declares into a
  Param of its own that accepts anything, so a typo (``dryrun``) would be ignored and the run would
  do the real thing. ``conf_refusal`` is the rule; the API server's trigger guard
  (``csl_airflow.trigger_guard``) answers it with HTTP 400 and every csl task checks it again before
  it does anything (``CslBaseOperator.pre_execute``).

Imported by DAG files: standard library only.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["PERIOD_BOUND", "STRICT_CONF_TAG", "ParamValue", "conf_refusal", "full_match", "param"]

# DAGs with this tag refuse undeclared conf keys at trigger time (every csl DAG carries it).
STRICT_CONF_TAG = "csl"


def full_match(body: str) -> str:
    """A JSON-schema ``pattern`` that matches only when ``body`` matches the whole string."""
    return f"^(?:{body})$(?!\\n)"


# A calendar date that exists: day 29 of February only in leap years, 30/31 only in the months that
# have them. Years 1000-9999 (no year 0, which Python and ISO 8601's basic profile refuse).
_LEAP_YEAR = "[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26])00"
_DATE = ("[1-9][0-9]{3}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
         f"|(?:0[13578]|1[02])-31)|(?:{_LEAP_YEAR})-02-29")
# A time of day to the microsecond, with an optional offset (none: UTC, as csl.settlement reads it).
_TIME = "[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
# A settlement period bound: an ISO date (midnight UTC) or date-time, the grammar of
# csl.settlement.parse_period restricted to instants that exist (tests/dags checks they agree).
# A pattern, not ``format``: jsonschema checks ``date-time`` only with rfc3339-validator installed
# (it is not), and ``date`` alone would refuse date-times.
PERIOD_BOUND = full_match(f"(?:{_DATE})(?:{_TIME})?")

class ParamValue:
    """A DAG Param's validated value for the running DAG run, as an operator argument.

    Airflow's templater resolves a template field's value that has ``resolve(context)`` (as it
    does for ``XComArg``) instead of rendering it, so the operator receives the native value
    from ``context["params"]`` — already checked against the Param's schema at trigger time.
    Its text (the UI's template view and the serialised DAG) is the template it stands for."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not name.isidentifier():
            raise ValueError(f"a Param name, got {name!r}")
        self.name = name

    def resolve(self, context: Mapping[str, Any]) -> Any:
        params = context["params"]
        if self.name not in params:
            raise KeyError(f"Param {self.name!r} is not declared by this DAG")
        return params[self.name]

    def __repr__(self) -> str:
        return f"{{{{ params.{self.name} }}}}"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamValue) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("ParamValue", self.name))


def param(name: str) -> ParamValue:
    """The run's value of the DAG's Param ``name``, for an operator's templated argument."""
    return ParamValue(name)


_MAX_NAMED = 10  # unknown keys named in a refusal; the rest are counted


def conf_refusal(dag_id: str, conf: Mapping[str, Any] | None, declared: Iterable[str]) -> str | None:
    """One line saying what is wrong with a run's ``conf`` for ``dag_id``, or None when nothing is:
    every key must be a declared Param, and no value may hold NaN or ±Infinity."""
    if not conf:
        return None
    names = sorted(declared)
    unknown = sorted(str(key) for key in conf if key not in names)
    if unknown:
        shown = []
        for key in unknown[:_MAX_NAMED]:
            close = difflib.get_close_matches(key, names, n=1)
            shown.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        more = f" and {len(unknown) - _MAX_NAMED} more" if len(unknown) > _MAX_NAMED else ""
        return (f"{dag_id}: conf key(s) not declared as Params: {', '.join(shown)}{more}; "
                f"declared: {', '.join(names) or 'none'}")
    non_finite = sorted(str(key) for key, value in conf.items() if _non_finite(value))
    if non_finite:
        return f"{dag_id}: conf {', '.join(non_finite)}: NaN and Infinity are not numbers"
    return None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False
