"""When a run of ``csl_performance_report`` makes a report (``csl.reports.report_due``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from csl.reports import ReportParamsError, report_due

AT_5 = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
AT_6 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def test_auto_reports_a_manual_run_always_and_a_scheduled_one_only_at_the_report_hour():
    assert report_due("auto", scheduled=False, interval_end=AT_6, report_hour_utc=5)[0] is True
    assert report_due("auto", scheduled=True, interval_end=AT_5, report_hour_utc=5)[0] is True
    due, why = report_due("auto", scheduled=True, interval_end=AT_6, report_hour_utc=5)
    assert due is False and why == "scheduled run ending 06:00 UTC; the report is made at 05:00 UTC"


def test_always_and_never_ignore_the_hour():
    assert report_due("always", scheduled=True, interval_end=AT_6, report_hour_utc=5)[0] is True
    assert report_due("never", scheduled=False, interval_end=AT_5, report_hour_utc=5) == (False, "make_report is 'never'")


@pytest.mark.parametrize(("mode", "hour", "named"), [("sometimes", 5, "make_report"), ("auto", 24, "report_hour_utc"),
                                                     ("auto", True, "report_hour_utc"), ("auto", "5", "report_hour_utc")])
def test_a_mode_or_hour_it_does_not_know_is_refused(mode, hour, named):
    with pytest.raises(ReportParamsError, match=named):
        report_due(mode, scheduled=True, interval_end=AT_5, report_hour_utc=hour)
