"""What a training run needs from the outside, as small interfaces.

The service plugs in gRPC clients of the feature store and the registry; tests
hand a Parquet file and a local ONNX file (or no champion at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow.parquet as pq
from driftloop.v1 import common_pb2
from driftloop_core.artifacts import sha256_hex


class SourceError(Exception):
    """A dependency refused or could not answer; the run fails at that stage."""


@dataclass(frozen=True)
class TrainingSet:
    """A materialised training set: its Parquet file and how the feature store describes it."""

    path: Path | str
    dataset: common_pb2.Dataset


class TrainingSetSource(Protocol):
    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        """The labelled rows of `window`; raises `SourceError` when it cannot."""
        ...


@dataclass(frozen=True)
class Champion:
    version: int
    onnx_bytes: bytes


@dataclass(frozen=True)
class ChampionLookup:
    """The champion, or None with the reason there is none to compare with."""

    champion: Champion | None
    note: str = ""


class ChampionSource(Protocol):
    async def champion(self, model: str) -> ChampionLookup:
        """The current champion's version and ONNX bytes; raises `SourceError`
        when the registry answered but the champion cannot be read."""
        ...


class NoChampion:
    """A registry with no champion: every run is the first."""

    async def champion(self, model: str) -> ChampionLookup:
        return ChampionLookup(None, "no champion")


class LocalChampion:
    """A champion read from a local ONNX file (tests, offline comparisons)."""

    def __init__(self, path: Path, version: int) -> None:
        self._path = path
        self._version = version

    async def champion(self, model: str) -> ChampionLookup:
        return ChampionLookup(Champion(self._version, self._path.read_bytes()))


class FileTrainingSets:
    """A fixed Parquet file as every training set (tests, offline runs)."""

    def __init__(self, path: Path, dataset: common_pb2.Dataset | None = None) -> None:
        self._path = path
        self._dataset = dataset

    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        if not self._path.exists():
            raise SourceError(f"no training set at {self._path}")
        dataset = common_pb2.Dataset()
        if self._dataset is not None:
            dataset.CopyFrom(self._dataset)
        else:
            dataset.uri = str(self._path)
            dataset.sha256 = sha256_hex(self._path.read_bytes())
            dataset.row_count = pq.read_metadata(self._path).num_rows
        dataset.requested.CopyFrom(window)
        return TrainingSet(self._path, dataset)
