"""Every service that reads the feature set refuses to start on an invalid one:
exit code 2 and a log line naming the file, the key and the rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from driftloop_core.broker import free_port

pytestmark = pytest.mark.integration

BAD = """name: payments
entity: customer_id
timestamp: ts
label: is_fraud
fields:
  amount: {type: money}
model:
  task: binary_classification
  features: [amount]
"""


@pytest.mark.parametrize("service", ["ingestion", "features", "drift", "trainer"])
def test_an_invalid_featureset_exits_2_naming_the_problem(service: str, tmp_path: Path) -> None:
    featureset = tmp_path / "bad.yaml"
    featureset.write_text(BAD)
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_FEATURESET": str(featureset),
        "DRIFTLOOP_ENDPOINTS__METRICS": json.dumps({service: free_port()}),
    }
    done = subprocess.run(
        [sys.executable, "-m", f"driftloop_{service}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "featureset_invalid" in output and "fields.amount.type" in output, output[-2000:]
