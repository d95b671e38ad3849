"""The registry's storage: SQL metadata through SQLAlchemy."""
