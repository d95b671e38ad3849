"""The ways events come in: gRPC `IngestService` and the `events.raw` topic."""
