"""Smoke tests of ``python -m bench.bench_data`` and ``bench.bench_train`` at minimal sizes:
they run end to end and report their rates and ratios (no speed assertions)."""

from __future__ import annotations

import pytest

from bench import bench_data, bench_train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_bench_data_reports_rates_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_data.main(["--cases", "6", "--size", "48", "--image-size", "32",
                              "--batch", "4", "--epochs", "1"])
    for key in ("raw_pydicom_cases_per_s", "first_epoch_cases_per_s", "cached_epoch_cases_per_s"):
        assert report[key] > 0
    assert set(report["ratios"]) == {"first epoch / raw decode", "cached epoch / raw decode"}
    assert "ratios" in capsys.readouterr().out


def test_bench_train_reports_rates_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_train.main(["--image-size", "32", "--batch", "4", "--cases", "8",
                               "--epochs", "2", "--steps", "2"])
    assert report["loop_images_per_s"] > 0 and report["bound_images_per_s"] > 0
    assert "runner loop / synthetic on device" in report["ratios"]
    assert "ratios" in capsys.readouterr().out
