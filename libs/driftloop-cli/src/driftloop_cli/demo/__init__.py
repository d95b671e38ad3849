"""`driftloop demo`: the whole loop on a built-in payments scenario with a known drift point.

`scenario` makes the events (seeded, pure), `driver` plays them through a real
stack and records what happened, `report` turns the record into
`demo-report/`, and `view` shows the run live.
"""
