"""`python -m driftloop_inference`: settings, telemetry, serve until a signal.

With `DRIFTLOOP_INFERENCE_WORKERS=N` (N > 1) this process starts N - 1 more
copies of itself; all bind the same port with SO_REUSEPORT and the kernel
spreads connections over them. Each loads the model and follows promotions on
its own. SIGTERM/SIGINT is passed on to the copies. Only the first process
serves /metrics (one port cannot be shared), so its figures are its own traffic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from driftloop_core.runtime import run_service
from driftloop_core.settings import load_settings

from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import load_inference_settings

WORKER_ENV = "DRIFTLOOP_INFERENCE_WORKER_INDEX"


def _spawn_workers(count: int) -> list[subprocess.Popen[bytes]]:
    children = []
    for index in range(1, count):
        env = {**os.environ, WORKER_ENV: str(index), "DRIFTLOOP_INFERENCE_REUSE_PORT": "1"}
        children.append(subprocess.Popen([sys.executable, "-m", "driftloop_inference"], env=env))
    return children


def main() -> int:
    settings = load_settings().for_service("inference")
    config = load_inference_settings()
    children: list[subprocess.Popen[bytes]] = []
    if config.workers > 1 and WORKER_ENV not in os.environ:
        children = _spawn_workers(config.workers)
        config = config.model_copy(update={"reuse_port": True})

        def forward(signum: int, frame: FrameType | None) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward)
    service = InferenceService(settings, config, settings.endpoints.inference)
    try:
        return run_service(settings, service.run_until_signal, metrics=WORKER_ENV not in os.environ)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
