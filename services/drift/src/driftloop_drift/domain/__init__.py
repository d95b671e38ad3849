"""The drift service's pure core: detectors, the prediction/label join and the retrain policy.

Nothing here imports grpc or aiokafka, and nothing reads a clock: every call is
given the time it runs at, so a replay of the same inputs rebuilds the same state.
"""
