"""What `hf-spam predict` reads: its arguments, or stdin as one text a line, a CSV with a header, or JSON
Lines; each record with its line (or CSV row), its id, and its text or why it has none."""

from __future__ import annotations

import argparse
import json
import sys


def where_of(args: argparse.Namespace, where: int, key) -> dict:
    """Where an answer's text came from: its line (or CSV row), and its id when `--id_column` names one."""
    place = {"row" if args.input_format == "csv" else "line": where}
    return {**place, "id": key} if args.id_column else place


def input_records(args: argparse.Namespace):
    """(line or row, id, text, error) of each input: the arguments, or stdin as lines, CSV or JSON Lines."""
    import csv
    import io

    if args.texts:  # arguments are texts whatever --input_format says; undecodable bytes come surrogate-escaped
        lines, form = (text.encode("utf-8", "surrogateescape") for text in args.texts), "lines"
    else:
        lines, form = (line.removesuffix(b"\n").removesuffix(b"\r") for line in sys.stdin.buffer), args.input_format
    if form == "csv":
        reader = csv.DictReader(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline=""))
        for column in filter(None, (args.text_column, args.id_column)):
            if column not in (reader.fieldnames or []):
                raise ValueError(f"stdin (CSV): no column {column!r}; its columns are {reader.fieldnames}")
        for row, record in enumerate(reader, 1):
            text = record[args.text_column]
            yield row, record.get(args.id_column), text, None if text and text.strip() else "empty text"
        return
    for number, raw in enumerate(lines, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, None, None, f"invalid UTF-8 at byte {err.start}"
            continue
        key = None
        if form == "jsonl":
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield number, None, None, f"not JSON: {err.msg} at column {err.colno}"
                continue
            record = record if isinstance(record, dict) else {}
            text, key = record.get(args.text_column), record.get(args.id_column)
            if not isinstance(text, str):
                yield number, key, None, f"field {args.text_column!r}: expected a text, got {type(text).__name__}"
                continue
        yield number, key, text, None if text.strip() else "empty text"
