#!/usr/bin/env bash
# MLServer 1.7.1 in a virtual environment of its own: its pins (FastAPI,
# protobuf, grpcio, numpy...) clash with the Driftloop workspace's, so it never
# shares .venv. Idempotent: an existing venv with the right versions is kept.
#
#   loadtests/mlserver/setup.sh [VENV]      (default: .bench/mlserver-venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.bench/mlserver-venv}"
PYTHON_VERSION="${MLSERVER_PYTHON:-3.11}"
UV="$(command -v uv || echo "python3 -m uv")"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"

# scikit-learn 1.6.1 is inside mlserver-sklearn 1.7.1's accepted range.
PINS=(mlserver==1.7.1 mlserver-sklearn==1.7.1 scikit-learn==1.6.1 joblib)

if [[ -x "$VENV/bin/mlserver" ]] && "$VENV/bin/python" - <<'PY' 2>/dev/null; then
from importlib.metadata import version
assert version("mlserver") == "1.7.1" and version("mlserver-sklearn") == "1.7.1"
PY
    echo "MLServer venv ready: $VENV"
    exit 0
fi

$UV venv --quiet --python "$PYTHON_VERSION" "$VENV"
$UV pip install --quiet --python "$VENV/bin/python" "${PINS[@]}"
echo "MLServer venv ready: $VENV"
