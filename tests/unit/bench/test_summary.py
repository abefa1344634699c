"""``python -m bench``: each benchmark's report becomes rows with their targets."""

from __future__ import annotations

from bench.summary import BENCHES, markdown, rows_of

BY = {b.name: b for b in BENCHES}


def test_every_issue_16_benchmark_is_in_the_run() -> None:
    assert set(BY) == {"submit", "enrich", "import", "data", "stream", "train", "previews",
                       "listing"}


def test_targets_are_judged_in_their_direction() -> None:
    rows = rows_of(BY["previews"], {"ratios": {"cold p50 / target 300 ms": 0.4,
                                               "cached p50 / target 50 ms": 1.3,
                                               "cold p50 / bare render p50": 1.1}})
    assert [(r.figure, r.met) for r in rows] == [
        ("cold p50 / 300 ms", True), ("cached p50 / 50 ms", False),
        ("cold p50 / bare render p50", None)]
    data = rows_of(BY["data"], {"ratios": {"first epoch / raw decode": 0.5,
                                           "cached epoch / raw decode": 12.0}})
    assert [r.met for r in data] == [False, True] and data[0].target == ">= 0.8"


def test_the_idempotency_key_path_is_compared_with_the_plain_one() -> None:
    report = {"ratios": {"gateway/raw throughput, sync always": 0.5,
                         "gateway+idempotency-key/raw throughput, sync always": 0.45,
                         "gateway/raw p99, sync always": 2.0}}
    rows = {r.figure: r for r in rows_of(BY["submit"], report)}
    idem = rows["Idempotency-Key path / plain path, req/s, sync always"]
    assert abs(idem.value - 0.9) < 1e-9 and idem.met is True  # type: ignore[operator]
    assert rows["gateway / raw publishes, req/s, sync always"].met is False
    assert rows["gateway / raw publishes, req/s, sync default"].value is None


def test_the_submit_path_is_also_read_against_the_bare_http_hop() -> None:
    report = {"ratios": {"bare HTTP/raw throughput, sync default": 0.94,
                         "gateway/bare HTTP throughput, sync default": 0.31,
                         "bare HTTP+publish/raw throughput, sync default": 0.53,
                         "gateway/bare HTTP+publish throughput, sync default": 0.79}}
    rows = {r.figure: r for r in rows_of(BY["submit"], report)}
    assert rows["bare HTTP 202 / raw publishes, req/s, sync default"].value == 0.94
    hop = rows["gateway / bare HTTP 202, req/s, sync default"]
    assert (hop.value, hop.target, hop.met) == (0.31, "", None)  # a reference, no target
    least = rows["bare HTTP+publish / raw publishes, req/s, sync default"]
    assert (least.value, least.met) == (0.53, None)
    assert rows["gateway / bare HTTP+publish, req/s, sync default"].value == 0.79


def test_a_failed_benchmark_is_a_row_that_says_why() -> None:
    rows = rows_of(BY["train"], {"error": "exit 1: boom"})
    assert len(rows) == 1 and rows[0].met is False and "boom" in rows[0].error
    table = markdown(rows, {"host": "h", "cpus": 2, "python": "3.11"}, "20261203T000000Z")
    assert "| train | (did not run) | exit 1: boom |" in table


def test_listing_figures_come_from_its_checks() -> None:
    rows = rows_of(BY["listing"], {"checks": {"limit=20: p50 100000 / limit=20 p50 100": 0.74,
                                              "limit=20 p50 under 50 ms": True}})
    assert [(r.value, r.met) for r in rows] == [(0.74, True), (True, True)]
