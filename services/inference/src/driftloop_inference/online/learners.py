"""The online learners the arena can run, by name, and the features they read.

Each is a river classifier that predicts one event and learns one label at a
time: `arf` (adaptive random forest), `hat` (Hoeffding adaptive tree) and `lr`
(a logistic regression over standardised numbers and one-hot categories). They
read the model's features as served: numbers as floats, categories as text; a
missing value (NaN, or the empty category) is left out, as river expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

LEARNERS = ("arf", "hat", "lr")


class Learner(Protocol):
    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]: ...

    def learn_one(self, x: dict[str, Any], y: Any) -> Any: ...


def make_learner(name: str, seed: int = 0) -> Learner:
    """A fresh learner of that name; ValueError names the ones there are."""
    from river import compose, forest, linear_model, preprocessing, tree

    if name == "arf":
        learner: Any = forest.ARFClassifier(seed=seed)
    elif name == "hat":
        learner = tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    elif name == "lr":
        numbers = compose.SelectType(int, float) | preprocessing.StandardScaler()
        categories = compose.SelectType(str) | preprocessing.OneHotEncoder()
        learner = (numbers + categories) | linear_model.LogisticRegression()
    else:
        raise ValueError(f"online learner {name!r}: expected one of {', '.join(LEARNERS)}")
    return learner  # type: ignore[no-any-return]


def learner_features(features: Mapping[str, float | int | str | bool | None]) -> dict[str, Any]:
    """The model's features as river takes them: missing values left out."""
    out: dict[str, Any] = {}
    for name, value in features.items():
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float):
            number = float(value)
            if not math.isnan(number):
                out[name] = number
        else:
            out[name] = value
    return out
