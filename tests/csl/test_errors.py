"""One error taxonomy (issue 13): every csl exception is bad input, a problem found, or
transient, and the CLI and the Airflow glue each map the kinds in one place."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

import csl
from csl.errors import BadInput, CslError, ProblemFound, ProviderUnavailable, ReplicaUnavailable, Transient
from csl.settlement import SettlementBusy, SettlementParamsError
from csl.storage.cleanup import CapExceeded
from csl_airflow.base import map_errors


def every_csl_error() -> set[type]:
    for module in pkgutil.walk_packages(csl.__path__, "csl."):
        if module.name != "csl.__main__":
            importlib.import_module(module.name)
    found, todo = set(), [CslError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found - {BadInput, ProblemFound, Transient}


def test_every_csl_error_has_a_kind():
    errors = every_csl_error()
    assert len(errors) > 20
    kindless = sorted(e.__qualname__ for e in errors if not issubclass(e, (BadInput, ProblemFound, Transient)))
    assert kindless == []


@pytest.mark.parametrize(("error", "airflow", "retried"), [
    (CapExceeded("3 objects would move, more than max_objects=1"), AirflowFailException, False),
    (SettlementParamsError("contributor_share_bps: expected 0..10000"), AirflowFailException, False),
    (ProblemFound("the gate failed"), AirflowFailException, False),
    (ProviderUnavailable("primary", "cannot reach"), AirflowException, True),
    (ReplicaUnavailable("lagging 90 s"), AirflowException, True),
    (SettlementBusy("another run holds the lock"), AirflowException, True),
])
def test_the_glue_maps_each_kind_once_transient_is_retried_the_rest_fails_at_once(error, airflow, retried):
    def execute(self, context):
        raise error

    with pytest.raises(airflow) as caught:
        map_errors(execute)(object(), {})
    assert (type(caught.value) is AirflowException) is retried  # AirflowFailException: no retry
    assert str(error) in str(caught.value) and caught.value.__cause__ is error


def test_errors_that_are_not_csl_s_pass_through_untouched():
    def execute(self, context):
        raise KeyError("not ours")

    with pytest.raises(KeyError):
        map_errors(execute)(object(), {})
