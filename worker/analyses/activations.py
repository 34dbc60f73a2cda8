"""The activation matrix: the pooled activation of every unit on every image of a corpus, one file per
model, layer and examples job, written by the examples stage in the same pass (`MatrixSink`).

Layout under the data folder: `activations/{model}/{layer}/{job fingerprint}/part-{i}of{N}.*`, one part
per listing range of the corpus (`worker.analyses.example_parts`; a single-stream run writes one part):
`.f16` (rows × units, float16, row-major: an analysis scans it sequentially, the layout saev found 10x
faster than random access), `.hash.i64` (each row's content hash, the first 63 bits of the image's
SHA-256: `images.sha256` finds its stored picture) and `.entry.i64` (its corpus stream position),
plus a JSON sidecar. Rows follow the stage's image order (first sighting of each content hash).

Partial rows after a kill are never trusted: the sidecar's `rows` is written at checkpoint time, after
the files are flushed, and a resumed run cuts the files back to the row count its checkpoint holds
(`counts["images"]`, one row per fresh image). The pooled value is the one the stage ranks the top
examples by (spatial mean, or max with `--reduce max`), pre-ReLU where the stage reads pre-ReLU.

The reader (numpy only, for the app too) is `app.activations.ActivationMatrix`.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.activations import ARTIFACT, DTYPE, ActivationMatrix, MatrixError

__all__ = ["ARTIFACT", "ActivationMatrix", "MatrixError", "MatrixSink"]


def part_name(index: int, count: int) -> str:
    return f"part-{index}of{count}"


@dataclass
class PartWriter:
    """Appends rows of one layer for one part; `commit` makes them durable and records the count."""

    folder: Path
    name: str
    units: int
    meta: dict
    rows: int = 0

    def open(self, trusted_rows: int) -> "PartWriter":
        """Start or resume: files cut back to `trusted_rows` (what the checkpoint accounts for)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for suffix, width in ((".f16", 2 * self.units), (".hash.i64", 8), (".entry.i64", 8)):
            path = self.folder / f"{self.name}{suffix}"
            with open(path, "ab") as f:
                if f.tell() < trusted_rows * width:
                    raise MatrixError(f"{path} holds fewer rows than the checkpoint ({trusted_rows}): delete "
                                      "the checkpoint (data/checkpoints/) to compute again from the start")
                f.truncate(trusted_rows * width)
        self.rows = trusted_rows
        self._files = {s: open(self.folder / f"{self.name}{s}", "ab") for s in (".f16", ".hash.i64", ".entry.i64")}
        return self

    def append(self, pooled: np.ndarray, hashes: np.ndarray, entries: np.ndarray) -> None:
        self._files[".f16"].write(np.ascontiguousarray(pooled, dtype=DTYPE).tobytes())
        self._files[".hash.i64"].write(np.ascontiguousarray(hashes, dtype=np.int64).tobytes())
        self._files[".entry.i64"].write(np.ascontiguousarray(entries, dtype=np.int64).tobytes())
        self.rows += len(pooled)

    def commit(self, complete: bool = False) -> None:
        """Flush and fsync the rows, then atomically replace the sidecar with their count."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        write_json(self.folder / f"{self.name}.json",
                   {**self.meta, "rows": self.rows, "units": self.units, "dtype": "float16", "complete": complete})

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class MatrixSink:
    """The examples stage's writer of activation matrices: one `PartWriter` per layer.

    The stage calls `add` per batch and layer with the pooled (images, units) values, `commit` when it
    saves its checkpoint, and `finish` when its pass is complete."""

    def __init__(self, data_dir: Path, model: str, layers: dict[str, int], fingerprint: str,
                 part: tuple[int, int], meta: dict):
        """`part`: (index, count), this sink's part of each layer's matrix."""
        self.folders = {name: matrix_folder(data_dir, model, name, fingerprint) for name in layers}
        name = part_name(*part)
        self.parts = {layer: PartWriter(self.folders[layer], name, units, {**meta, "layer": layer,
                                                                           "part": "{}/{}".format(*part)})
                      for layer, units in layers.items()}
        self.data_dir = Path(data_dir)

    def open(self, trusted_rows: int) -> "MatrixSink":
        for part in self.parts.values():
            part.open(trusted_rows)
        return self

    def add(self, layer: str, pooled, hashes, entries) -> None:
        """pooled: (B, units) tensor or array; hashes, entries: (B,). A non-finite value (an fp16 overflow,
        which the examples stage leaves out and counts as `non-finite:<layer>`) is written as 0, so one bad
        activation does not turn every projection of the matrix into NaN."""
        values = np.nan_to_num(to_numpy(pooled), nan=0.0, posinf=0.0, neginf=0.0)
        self.parts[layer].append(values, to_numpy(hashes), to_numpy(entries))

    def commit(self) -> None:
        for part in self.parts.values():
            part.commit()

    def finish(self) -> dict[str, str]:
        """Mark every part complete; {layer: folder relative to the data folder}."""
        for part in self.parts.values():
            part.commit(complete=True)
            part.close()
        return {layer: str(folder.relative_to(self.data_dir)) for layer, folder in self.folders.items()}


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def matrix_folder(data_dir: Path, model: str, layer: str, fingerprint: str) -> Path:
    return Path(data_dir) / "activations" / model / layer / fingerprint




def matrix_sink(data_dir: Path, job, specs, signal: str) -> MatrixSink:
    """The sink of an examples job (worker.analyses.examples.Job): one matrix per layer, named by the job's
    fingerprint, so a resumed run appends to its own files and another corpus or setting never mixes in."""
    meta = {"model": job.model, "corpus": job.corpus, "corpus_digest": job.corpus_digest, "entries": job.entries,
            "reduce": job.reduce, "signal": signal, "fingerprint": job.fingerprint,
            "layout": "rows x units, row-major, float16; rows in the stage's image order"}
    return MatrixSink(Path(data_dir), job.model, {s.name: s.n_units for s in specs}, job.fingerprint, (0, 1), meta)


def register_matrices(store, model_name: str, folders: dict[str, str], run_id: int | None) -> None:
    """Point each layer's `activations` Artifact at its (complete) matrix folder, relative to the data folder."""
    from worker.analyses.artifacts import put_artifact

    for layer, folder in folders.items():
        matrix = ActivationMatrix(Path(store.settings.data_dir) / folder)
        meta = {"rows": matrix.rows, "units": matrix.units, "corpus": matrix.corpus,
                "reduce": matrix.meta[0]["reduce"], "signal": matrix.meta[0]["signal"]}
        put_artifact(store, model_name, layer, ARTIFACT, folder, meta, run_id)


def stored_matrix(store, model_name: str, layer: str) -> ActivationMatrix:
    """The layer's registered matrix, or MatrixError naming the command that writes it."""
    from sqlalchemy import select

    from store.schema import Artifact, Model

    with store.sessions() as session:
        row = session.scalar(select(Artifact).join(Model, Artifact.model_id == Model.id).where(
            Model.name == model_name, Artifact.layer == layer, Artifact.name == ARTIFACT))
        if row is None:
            raise MatrixError(f"model {model_name} has no activation matrix for {layer}: run "
                              f"`microscope worker examples … --layer {layer}` first")
        return ActivationMatrix(Path(store.settings.data_dir) / row.path)
