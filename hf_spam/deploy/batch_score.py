"""`hf-spam score`: a directory (or glob) of Parquet, CSV or JSON Lines files scored on Ray Data, one Parquet
shard per input file, on this machine or a Ray cluster.

    hf-spam score --model outputs/recommended --input 'traffic/2026-12-03/*.parquet' --output scores/2026-12-03
    ray start --head   # or a cluster's address:
    hf-spam score --model ... --input ... --output ... --ray_address auto

Each actor of the pool loads the model once (`SpamClassifier`, torch or the ONNX export) and scores the
blocks Ray Data hands it (`map_batches`). The driver writes one shard per input file, `OUTPUT/<file>.parquet`
(source row, id, label, score, one probability column per class, and `refused`, the reason a row was not
scored), renamed into place once complete: a killed run started again with the same command skips the
shards already written. `OUTPUT/_SUCCESS` is a JSON summary: rows, spam, refused rows by reason, seconds,
messages/s. A bad row (no text, not text, empty, over `--max_text_chars`) is refused in its shard, never
dropped and never fatal.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
SUCCESS = "_SUCCESS"
# Reading is light next to scoring: a read task asks for a quarter of a core, and the actors share all cores but
# one between them (Ray's cores are for scheduling; each actor's torch still runs its share of threads), so that
# listing and reading files always find room: an actor pool holding every core left them waiting for ever.
READ_TASK = {"num_cpus": 0.25}


def input_files(pattern: str) -> list[Path]:
    """The files `pattern` names: a file, a directory's Parquet/CSV/JSONL files, or a glob; sorted."""
    path = Path(pattern)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in FORMATS and p.is_file()]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    unknown = [p for p in found if p.suffix.lower() not in FORMATS]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a .parquet, .csv or .jsonl file")
    if not found:
        raise ValueError(f"--input {pattern}: no .parquet, .csv or .jsonl file there")
    return sorted(found)


def shard_name(path: Path, inputs: list[Path]) -> str:
    """The output shard of an input file: its name, made unique by its parent where two inputs share one."""
    names = Counter(p.name for p in inputs)
    stem = path.name if names[path.name] == 1 else f"{path.parent.name}__{path.name}"
    return f"{stem}.parquet"


class Scorer:
    """A Ray actor: one `SpamClassifier`, loaded once, that scores a block of rows."""

    def __init__(self, model_dir, backend, dtype, device, batch_size, text_column, id_column, max_text_chars, threads):
        import torch

        from hf_spam.deploy.classifier import load_classifier

        torch.set_num_threads(threads)
        # On a GPU, Ray has set CUDA_VISIBLE_DEVICES to this actor's own: "cuda" is that one.
        self.classifier = load_classifier(
            model_dir, batch_size=batch_size, dtype=dtype, backend=backend, device=device
        )
        self.labels = [self.classifier.config.id2label[i] for i in sorted(self.classifier.config.id2label)]
        self.text_column, self.id_column, self.max_text_chars = text_column, id_column, max_text_chars

    def __call__(self, batch):
        return score_block(self.classifier, self.labels, batch, self.text_column, self.id_column, self.max_text_chars)


def refusal(value, max_text_chars: int) -> str | None:
    """Why a row's text cannot be scored, or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "no text"
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value.strip():
        return "empty text"
    if len(value) > max_text_chars:
        return f"over {max_text_chars:,} characters"
    return None


def score_block(classifier, labels, batch: dict, text_column: str, id_column: str | None, max_text_chars: int):
    """The scores of one block (`{column: array}`), every row kept: a refused row has no label or score."""
    texts = list(batch[text_column])
    reasons = [refusal(text, max_text_chars) for text in texts]
    good = [i for i, reason in enumerate(reasons) if reason is None]
    probabilities = np.full((len(texts), len(labels)), np.nan, np.float32)
    if good:
        probabilities[good] = classifier.predict_proba([texts[i] for i in good])
    decided = classifier.decide(np.nan_to_num(probabilities)) if len(texts) else np.zeros(0, int)
    out = {
        "path": np.asarray(batch["path"]),
        "id": np.asarray([str(v) for v in batch[id_column]]) if id_column else np.full(len(texts), None),
        "label": np.asarray([labels[d] if r is None else None for d, r in zip(decided, reasons, strict=True)]),
        "score": np.asarray(
            [
                probabilities[i, d] if r is None else np.nan
                for i, (d, r) in enumerate(zip(decided, reasons, strict=True))
            ],
            np.float32,
        ),
        "refused": np.asarray(reasons, dtype=object),
    }
    for j, label in enumerate(labels):
        out[f"p_{label}"] = probabilities[:, j]
    return out


def read_dataset(files: list[Path], text_column: str, id_column: str | None):
    """One Ray dataset over `files` (all of one format per call), each row with its source `path`."""
    import ray.data

    columns = [text_column] + ([id_column] if id_column else [])
    kind = FORMATS[files[0].suffix.lower()]
    paths = [str(p) for p in files]
    if kind == "parquet":
        return ray.data.read_parquet(paths, columns=columns, include_paths=True, ray_remote_args=READ_TASK)
    if kind == "csv":  # a message of digits is still text: no type inference on the text column
        import pyarrow as pa
        import pyarrow.csv

        convert = pyarrow.csv.ConvertOptions(column_types={text_column: pa.string()}, include_columns=columns)
        return ray.data.read_csv(paths, include_paths=True, convert_options=convert, ray_remote_args=READ_TASK)
    return ray.data.read_json(paths, include_paths=True, lines=True, ray_remote_args=READ_TASK).select_columns(
        [*columns, "path"]
    )


def start_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # a local instance: the cores given, no dashboard, quiet
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # a file's rows end before the next
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


class ShardWriter:
    """Writes each input file's rows to `<shard>.parquet.partial` and renames it when the file's last row is in:
    rows come in input order, so a new file means the last one is complete."""

    def __init__(self, output: Path, names: dict[str, str]):
        self.output, self.names = output, names
        self.current, self.writer, self.rows = None, None, 0
        self.summary = {"rows": 0, "spam": 0, "refused": Counter(), "shards": 0}

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for path in dict.fromkeys(table.column("path").to_pylist()):
            part = table.filter(pc.equal(table.column("path"), path))
            if path != self.current:
                self.finish()
                self.current, self.rows = path, 0
            rows = pa.array(range(self.rows, self.rows + part.num_rows), pa.int64())
            part = part.drop_columns(["path"]).add_column(0, "row", rows)
            if self.writer is None:
                self.writer = _parquet_writer(self.partial(), part.schema)
            self.writer.write_table(part.cast(self.writer.schema))
            self.rows += part.num_rows
            self._count(part)

    def _count(self, part) -> None:
        self.summary["rows"] += part.num_rows
        self.summary["spam"] += sum(1 for label in part.column("label").to_pylist() if label == "spam")
        self.summary["refused"].update(r for r in part.column("refused").to_pylist() if r is not None)

    def partial(self) -> Path:
        return self.output / f"{self.names[self.current]}.partial"

    def finish(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        os.replace(self.partial(), self.output / self.names[self.current])
        self.writer, self.summary["shards"] = None, self.summary["shards"] + 1


def _parquet_writer(path: Path, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A block whose rows were all refused gives null-typed columns: fix the types for the whole shard.
    fields = [
        pa.field(f.name, pa.string() if f.name in ("id", "label", "refused") else f.type)
        if pa.types.is_null(f.type) or f.name in ("id", "label", "refused")
        else f
        for f in schema
    ]
    return pq.ParquetWriter(path, pa.schema(fields))


def check_gpus(needed: int) -> None:
    """Ray would wait for ever for GPUs its cluster lacks: refuse at once instead."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if needed > have:
        raise ValueError(f"--device cuda: {needed} actor(s) need a GPU each; the Ray cluster has {have:g}")


def score(args) -> dict:
    """Score every input file not yet scored; write its shard and the `_SUCCESS` summary; the summary."""
    files = input_files(args.input)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    names = {str(p.resolve()): shard_name(p, files) for p in files}
    pending = [p for p in files if not (output / names[str(p.resolve())]).exists()]
    (output / SUCCESS).unlink(missing_ok=True)
    started = time.perf_counter()
    writer = ShardWriter(output, names)
    if pending:
        from ray.data import ActorPoolStrategy

        start_ray(args.ray_address, args.num_cpus)
        cores = args.num_cpus or os.cpu_count()
        gpus = 1 if args.device == "cuda" else 0  # per actor
        threads = max(1, cores // args.actors)
        scorer = dict(
            model_dir=str(Path(args.model).resolve()), backend=args.backend, dtype=args.dtype, device=args.device,
            batch_size=args.batch_size, text_column=args.text_column, id_column=args.id_column,
            max_text_chars=args.max_text_chars, threads=threads,
        )  # fmt: skip
        try:
            check_gpus(gpus * args.actors)
            for kind in dict.fromkeys(FORMATS[p.suffix.lower()] for p in pending):
                group = [p.resolve() for p in pending if FORMATS[p.suffix.lower()] == kind]
                scored = read_dataset(group, args.text_column, args.id_column).map_batches(
                    Scorer, fn_constructor_kwargs=scorer, compute=ActorPoolStrategy(size=args.actors),
                    num_cpus=max(0.25, (cores - 1) / args.actors), num_gpus=gpus,
                    batch_size=args.block_rows, batch_format="numpy",
                )  # fmt: skip
                for table in scored.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write(table)
                writer.finish()
        finally:
            import ray

            ray.shutdown()  # this command's instance, or its connection to the cluster
    seconds = time.perf_counter() - started
    summary = {
        "model": Path(args.model).name,
        "backend": args.backend,
        "dtype": args.dtype,
        "device": args.device,
        "actors": args.actors,
        "files": len(files),
        "shards_written": writer.summary["shards"],
        "shards_skipped": len(files) - len(pending),
        "rows": writer.summary["rows"],
        "spam": writer.summary["spam"],
        "refused": dict(writer.summary["refused"].most_common()),
        "seconds": round(seconds, 2),
        "messages_per_s": round(writer.summary["rows"] / seconds, 1) if seconds else None,
    }
    (output / SUCCESS).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    from hf_spam.argtypes import ArgumentParser, positive_int

    parser = ArgumentParser(prog="hf-spam score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A directory written by `hf-spam train`.")
    parser.add_argument("--input", required=True, help="A file, a directory, or a glob of .parquet/.csv/.jsonl.")
    parser.add_argument("--output", required=True, help="Where the shards and _SUCCESS go.")
    parser.add_argument("--text_column", default="text", help="The column of the messages (default text).")
    parser.add_argument("--id_column", default=None, help="A column to carry into the output as `id`.")
    parser.add_argument("--actors", type=positive_int, default=1, help="Models in the actor pool (default 1).")
    parser.add_argument("--num_cpus", type=positive_int, default=None, help="Cores of a local Ray (default all).")
    parser.add_argument("--ray_address", default=None, help="A running Ray cluster (`auto`, or ray://HOST:10001).")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per actor (torch).")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="Texts per forward pass (default 64).")
    parser.add_argument("--block_rows", type=positive_int, default=4096, help="Rows an actor scores a call.")
    parser.add_argument("--max_text_chars", type=positive_int, default=100_000, help="Longer texts are refused.")
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("hf-spam score: needs Ray Data: `pip install 'hf_spam[ray]'` (or `make install`)", file=sys.stderr)
        return 2
    if not (Path(args.model) / "config.json").is_file():
        print(
            f"hf-spam score: --model {args.model}: no config.json there (a directory of hf-spam train)",
            file=sys.stderr,
        )
        return 2
    if args.backend == "onnxruntime" and args.device != "cpu":
        print("hf-spam score: --device: the onnxruntime backend runs on the CPU", file=sys.stderr)
        return 2
    try:
        summary = score(args)
    except ValueError as err:
        print(f"hf-spam score: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"hf-spam score: {summary['rows']:,} rows, {summary['spam']:,} spam, "
          f"{sum(summary['refused'].values()):,} refused; shards in {args.output}", file=sys.stderr)  # fmt: skip
    return 0
