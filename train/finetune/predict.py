"""Predictions of a fine-tuned CLOUD package for structures in any format the readers accept.

``predict_files`` reads every structure (``cluster.readers.read_file``: CIF, POSCAR, pymatgen
JSON, Matbench JSON, CSV with a cif column, JSON Lines, OPTIMADE…), encodes it as a SCOPE
string of the package's variant and predicts. A structure that cannot be read or encoded
(or is longer than the model's positions) gets a row with an empty prediction and the reason
in ``error``: nothing is skipped silently.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from cloud.heads import CloudForPropertyPrediction
from cloud.model import CloudForMaskedLM

BATCH_SIZE = 256


@dataclass
class Prediction:
    """One input structure and what the model says about it."""

    id: str
    """The reader's id (material id, mb-id, file stem, ``<file>:<row>``)."""
    source: str
    """Where it was read: ``<path>:<index>``."""
    scope: str | None = None
    """Its SCOPE string; None when it could not be read or encoded."""
    values: list[float] = field(default_factory=list)
    """Regression: the predicted target(s); classification: the class probabilities."""
    label: Any = None
    """Classification: the most probable class."""
    error: str | None = None
    """Why there is no prediction; None when there is one."""


@dataclass
class Predictor:
    """A loaded fine-tuned package and how to read its outputs."""

    model: CloudForPropertyPrediction
    tokenizer: Any
    variant: str
    target: str
    unit: str
    classes: list[Any] | None
    device: torch.device

    @property
    def is_regression(self) -> bool:
        return self.model.head_config.is_regression


def load_predictor(path: str | os.PathLike[str], device: str = "auto") -> Predictor:
    """A fine-tuned export package (``cloud finetune`` writes ``OUT/model``); the run
    directory itself is accepted too."""
    from cloud.export import is_package, load_pretrained
    from train.common.devices import resolve_device
    from train.common.packages import checkpoint_variant

    path = Path(path)
    if not is_package(path) and is_package(path / "model"):
        path = path / "model"
    package = load_pretrained(path)
    if not isinstance(package.model, CloudForPropertyPrediction):
        kind = type(package.model).__name__
        if isinstance(package.model, CloudForMaskedLM):
            raise ValueError(
                f"{path} is a pretrained package ({kind}), not a fine-tuned one: it has no "
                f"prediction head; fine-tune it first: cloud finetune --checkpoint {path} "
                "--task TASK (cloud finetune --list-tasks names the tasks)"
            )
        raise ValueError(
            f"{path} holds a {kind}, not a fine-tuned CloudForPropertyPrediction; "
            "cloud predict runs the packages that cloud finetune writes"
        )
    finetune = package.metadata.get("finetune") or {}
    target_device = resolve_device(device)
    return Predictor(
        model=package.model.to(target_device).eval(),
        tokenizer=package.tokenizer,
        variant=checkpoint_variant(package),
        target=str(finetune.get("target", "prediction")),
        unit=str(finetune.get("unit", "")),
        classes=finetune.get("classes"),
        device=target_device,
    )


def read_structures(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Any]:
    """Every record of every path (files or folders); a missing or unreadable file is a
    record with an error, as ``cluster.readers`` reports it."""
    from cluster.readers import read_file

    for path in paths:
        yield from read_file(path)


def predict_records(
    predictor: Predictor, records: Iterable[Any], batch_size: int = BATCH_SIZE
) -> Iterator[Prediction]:
    """A ``Prediction`` per record, in input order."""
    pending: list[tuple[Prediction, list[int]]] = []
    for record in records:
        prediction, ids = _prepare(predictor, record)
        if ids is None:
            if pending:  # keep the input order: flush what is waiting first
                yield from _run_batch(predictor, pending)
                pending = []
            yield prediction
            continue
        pending.append((prediction, ids))
        if len(pending) == batch_size:
            yield from _run_batch(predictor, pending)
            pending = []
    if pending:
        yield from _run_batch(predictor, pending)


def _prepare(predictor: Predictor, record: Any) -> tuple[Prediction, list[int] | None]:
    from tokenizer import ScopeError
    from train.finetune.loading import encode_structure

    prediction = Prediction(id=record.source_id, source=record.position)
    if record.error is not None or record.structure is None:
        prediction.error = f"read: {record.error or 'no structure'}"
        return prediction, None
    try:
        prediction.scope = encode_structure(record.structure, predictor.variant)
    except ScopeError as exc:
        prediction.error = f"encode: {exc}"
        return prediction, None
    ids = predictor.tokenizer.encode(prediction.scope)
    limit = predictor.model.config.max_position_embeddings
    if len(ids) > limit:
        prediction.error = f"encode: {len(ids)} tokens, more than the model's {limit} positions"
        return prediction, None
    return prediction, ids


def _run_batch(
    predictor: Predictor, pending: list[tuple[Prediction, list[int]]]
) -> list[Prediction]:
    from train.common.batching import make_batch

    inputs = make_batch(predictor.tokenizer, [ids for _, ids in pending], predictor.device)
    outputs = predictor.model.predict(**inputs).cpu()
    for (prediction, _), row in zip(pending, outputs, strict=True):
        prediction.values = [float(v) for v in row]
        if not predictor.is_regression:
            best = int(row.argmax())
            prediction.label = predictor.classes[best] if predictor.classes else best
    return [prediction for prediction, _ in pending]


def csv_columns(predictor: Predictor) -> list[str]:
    """id, source, scope, the prediction column(s), error."""
    if predictor.is_regression:
        n = predictor.model.head_config.num_outputs
        values = ["prediction"] if n == 1 else [f"prediction_{k}" for k in range(n)]
    else:
        names = predictor.classes or list(range(predictor.model.head_config.num_outputs))
        values = ["prediction", *(f"probability_{name}" for name in names)]
    return ["id", "source", "scope", *values, "error"]


def csv_row(predictor: Predictor, prediction: Prediction) -> list[Any]:
    if predictor.is_regression:
        width = predictor.model.head_config.num_outputs
        values: list[Any] = [f"{v:.6g}" for v in prediction.values] or [""] * width
    else:
        probabilities = [f"{v:.6g}" for v in prediction.values]
        width = predictor.model.head_config.num_outputs
        label = "" if prediction.label is None else prediction.label
        values = [label, *(probabilities or [""] * width)]
    return [
        prediction.id,
        prediction.source,
        prediction.scope or "",
        *values,
        prediction.error or "",
    ]


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    out: TextIO,
    errors: TextIO | None = None,
) -> tuple[int, int]:
    """Write the CSV of every structure in ``paths`` to ``out``; each failure is also
    reported on ``errors``. Returns (predicted, failed)."""
    writer = csv.writer(out)
    writer.writerow(csv_columns(predictor))
    predicted = failed = 0
    for prediction in predict_records(predictor, read_structures(paths)):
        writer.writerow(csv_row(predictor, prediction))
        if prediction.error is None:
            predicted += 1
            continue
        failed += 1
        if errors is not None:
            print(f"error: {prediction.source}: {prediction.error}", file=errors)
    return predicted, failed
