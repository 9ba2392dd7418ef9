"""The experiments the Helm chart's example values seed are in the format the gateway reads."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml

from app.experiments.store import load_seed_file
from app.settings import PlanSettings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "twice"


def test_chart_example_experiments_load_as_a_seed_file(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "cpu-values.yaml").read_text())
    seed = tmp_path / "experiments.json"
    seed.write_bytes(orjson.dumps(values["experiments"]))  # what the chart's toPrettyJson writes
    experiments = load_seed_file(seed)
    assert [e.name for e in experiments] == [e["name"] for e in values["experiments"]]
    for experiment in experiments:
        experiment.check_rounds(PlanSettings(max_rounds=values["plan"]["maxRounds"]))
    assert experiments[0].control.name == values["experiments"][0]["variants"][0]["name"]
