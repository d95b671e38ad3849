"""The drift service's pure core: detectors, the prediction/label join, the retrain
policy and the rollout judge.

Nothing here imports grpc or aiokafka, and nothing reads a clock: every call is
given the time it runs at, so a replay of the same inputs rebuilds the same state.
"""
