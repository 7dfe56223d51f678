"""What a run logs: metrics.csv rows, the loss plot, and the progress bar that a caller may turn off."""
import csv

import pytest

from flexip_train.logs import MetricsLog

METRICS = {"loss": 0.5, "alpha": 0.9, "beta": 0.8, "lr": 1e-4}


@pytest.mark.parametrize("progress", [True, False])
def test_metrics_are_written_with_or_without_the_progress_bar(tmp_path, capsys, progress):
    log = MetricsLog(tmp_path, enabled=True, total=3, progress=progress)
    for step in (1, 2, 3):
        log.step(step, {**METRICS, "loss": METRICS["loss"] / step}, write=step != 2)
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], float(r["loss"])) for r in rows] == [("1", 0.5), ("3", 0.5 / 3)]
    assert (tmp_path / "metrics.png").stat().st_size > 0
    assert ("training:" in capsys.readouterr().err) == progress


def test_a_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path / "run", enabled=False, total=3)
    log.step(1, METRICS, write=True)
    log.close()
    assert not (tmp_path / "run").exists()
