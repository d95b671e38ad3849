"""`driftloop backtest`: a user's labelled stream replayed through the loop, in process.

The same parts the services run (the ingestion validator, the feature store's
point-in-time arithmetic, the drift engine, the trainer and the registry's
gate) driven on a simulated clock, so a user can see in minutes what the loop
would have done on their data, next to river's adaptive models on the same
events.
"""
