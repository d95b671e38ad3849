"""Ingestion's ports to the outside: the SQLite event index and the Kafka sink."""
