"""Fit MLServer's side of the inference benchmark and lay out its model repository.

Runs inside the MLServer virtual environment (loadtests/mlserver/setup.sh), not
Driftloop's: MLServer's scikit-learn runtime loads a joblib file, which is its
own format, produced and read only here. The rows come from the benchmark as a
NumPy .npz file (no pickle), so both servers learn exactly the same data; the
channel is one-hot encoded here because MLServer's runtime takes one 2-D
numeric tensor per request, in COLUMNS order.

    python train_model.py --data rows.npz --repository DIR --grpc-port N \
        --http-port N --metrics-port N
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib  # type: ignore[import-untyped]
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

MODEL_NAME = "payments"
CHANNELS = ("web", "pos", "atm")
COLUMNS = ("amount", *(f"channel_{c}" for c in CHANNELS), "hour", "amount_mean_1h", "txn_count_10m")
# The same hyperparameters as the Driftloop side (the trainer's first candidate).
PARAMS = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31}


def matrix(rows: np.lib.npyio.NpzFile) -> np.ndarray:
    """The rows as float32 in COLUMNS order, channel one-hot."""
    channel = rows["channel"]
    parts = [rows["amount"]]
    parts += [(channel == c).astype(np.float32) for c in CHANNELS]
    parts += [rows["hour"], rows["amount_mean_1h"], rows["txn_count_10m"]]
    return np.column_stack(parts).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()

    with np.load(args.data, allow_pickle=False) as rows:
        features = matrix(rows)
        labels = rows["label"].astype(np.int64)
    model = HistGradientBoostingClassifier(early_stopping=False, random_state=0, **PARAMS)
    model.fit(features, labels)

    model_dir = args.repository / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                # Its worker pool fails to start on this Python: infer in the server process.
                "parallel_workers": 0,
                "parameters": {"uri": "./model.joblib", "version": "1"},
            },
            indent=2,
        )
    )
    (args.repository / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": args.http_port,
                "grpc_port": args.grpc_port,
                "metrics_port": args.metrics_port,
                "parallel_workers": 0,
                # Its default is true; production runs without debug logging.
                "debug": False,
                "load_models_at_startup": True,
            },
            indent=2,
        )
    )
    accuracy = float((model.predict(features) == labels).mean())
    print(json.dumps({"rows": len(labels), "train_accuracy": accuracy, "columns": COLUMNS}))


if __name__ == "__main__":
    main()
