"""The chaos suite's own checks can fail: fed a bad log or a bad answer, they say so.

Pure functions only (no broker, no binaries): scripts/test.sh runs these
with pytest before the short chaos run.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chaos  # noqa: E402
import load_faults  # noqa: E402


def entry(seq, event_id, outcome, event="PolicySignalRecorded"):
    return {"seq": seq, "event_id": event_id, "event": event, "outcome": outcome}


APPLIED = {"kind": "APPLIED", "from": "AWAITING_DECISION", "to": "AWAITING_DECISION", "effect": None}
DUPLICATE = {"kind": "REFUSED", "code": "Duplicate", "reason": "event e1 was already recorded"}


def test_an_event_applied_twice_is_counted():
    records = [{"instance_id": "i1", "history": [entry(1, "e1", APPLIED), entry(2, "e1", APPLIED)]}]
    facts = load_faults.log_facts(records)
    assert facts.applied_twice == 1
    assert facts.duplicates == 0


def test_a_retry_folded_as_duplicate_is_not_applied_twice():
    records = [{"instance_id": "i1", "history": [entry(1, "e1", APPLIED), entry(2, "e1", DUPLICATE)]}]
    facts = load_faults.log_facts(records)
    assert facts.applied_twice == 0
    assert facts.duplicates == 1
    assert [e["instance_id"] for e in facts.events["e1"]] == ["i1", "i1"]


def answer(status, body, retry_after=None, elapsed=0.1):
    return load_faults.Answer(status, body, retry_after, elapsed)


class FakeSystem:
    tokens = {"agent:sdk": {"service": "s", "executor": "x"}, "policy": "p"}
    reviewer_secrets = {"alice": "a", "bob": "b"}
    intake_url = "http://127.0.0.1:9"


def counted(*answers):
    load = load_faults.Load(FakeSystem())
    op = load._signal("i1")
    for one in answers:
        load._count(op, one)
    return load.stats


def test_a_503_without_retry_after_a_slow_answer_and_a_500_are_failures():
    stats = counted(
        answer(503, {"error": {"code": "log_unavailable"}}),
        answer(202, {"event_id": "e1"}, elapsed=load_faults.PRODUCE_TIMEOUT_S + load_faults.MARGIN_S + 1),
        answer(500, {"error": {"code": "internal"}}),
        answer(0, None),
    )
    assert stats.no_retry_after == 1
    assert stats.hangs == 1
    assert stats.other_5xx == 1
    assert stats.unanswered == 1
    assert stats.acked_events == {"e1": "signal"}


def test_a_503_with_retry_after_in_time_is_only_a_refusal():
    stats = counted(answer(503, {"error": {"code": "log_unavailable"}}, retry_after="1", elapsed=5.0))
    assert (stats.refused_503, stats.no_retry_after, stats.hangs) == (1, 0, 0)
    assert stats.codes_503 == {"log_unavailable": 1}


def test_a_fault_result_missing_a_figure_fails_its_row():
    row = chaos.checked("broker-stop", {"fault": "broker-stop", "ok": True})
    assert row["ok"] is False
    assert "sent" in row["detail"]
    line = chaos.row(row)
    assert "FAILED" in line and "n/a" in line
