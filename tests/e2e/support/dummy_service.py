"""A stand-in service for supervisor tests: a gRPC health endpoint and nothing else."""

from __future__ import annotations

import asyncio
import os

from driftloop_core.grpc.server import build_server
from driftloop_core.settings import load_settings


async def main() -> None:
    settings = load_settings(service_name="dummy")
    server = build_server(settings, [], os.environ["DUMMY_ENDPOINT"])
    await server.start()
    print("dummy serving", flush=True)
    await server.serve_until_signal()


if __name__ == "__main__":
    asyncio.run(main())
