"""How records reach the drift engine."""
