"""`driftloop up` into a pipe keeps every service log line whole, however narrow the
terminal it was started from claims to be."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.stack import stack_env

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
PREFIX = re.compile(r"^ *[\w-]+ \|( |$)")


def test_json_log_lines_are_not_wrapped_when_output_is_a_pipe(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home", COLUMNS="40")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "registry"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and up.poll() is None:
            done = subprocess.run(
                [*DRIFTLOOP, "status"], env=env, capture_output=True, text=True, timeout=30
            )
            if done.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("driftloop up --only registry never became ready")
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output

    # Each line is a prefixed line of a service or of the supervisor ("  registry |
    # ..."), or a JSON log line of the supervisor itself; a wrapped line would leave
    # its tail on a line that is neither.
    logged: list[dict[str, object]] = []
    for line in filter(None, output.splitlines()):
        prefixed = PREFIX.match(line)
        text = line[prefixed.end() :] if prefixed else line
        if text.startswith("{") or not prefixed:
            logged.append(json.loads(text))
    events = {(event["service"], event["event"]) for event in logged}
    assert ("registry", "telemetry_started") in events, output
    assert ("supervisor", "broker_stopped") in events, output
