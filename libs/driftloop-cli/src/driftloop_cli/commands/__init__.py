"""Thin-client subcommands of `driftloop`, one module per service."""
