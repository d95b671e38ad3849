"""Adapters that turn gRPC calls and stream records into feature-store calls."""
