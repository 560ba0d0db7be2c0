"""`hf-spam experiments`: the book's table of chapter 6 bonus experiments, each row its own training run.

    hf-spam experiments                          # every row on the embedded pretrained SmolLM2-135M
    hf-spam experiments --rows 1,3,4 --model gpt2  # with Hub access: the book's own base model
    hf-spam experiments --quick                  # a tiny random GPT-2, for tests (under two minutes)

The rows are those of `ch06/02_bonus_additional-experiments` in rasbt/LLMs-from-scratch: the book's recipe
(last_block, 5 epochs, batch 8, learning rate 5e-5, weight decay 0.1, seed 123) with one setting changed.
Every row is its own training run (`hf-spam train`) on the same seed and split, into `OUTPUT_DIR/row-N`
(its log in `row-N/train.log`), and
`experiments.md` / `experiments.json` hold its train/validation/test accuracy, test F1 and time beside the
book's figures. A row that hf_spam computes identically to another (it always reads the last real token, so
padding only changes compute) is shown as that row, and a row it cannot run here says why.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_spam.argtypes import ArgumentParser
from hf_spam.training.arguments import book_recipe

# The book's recipe, as train flags. Checkpoints and the natural-rate pass are off: the table needs neither.
# A row run again replaces its own directory.
RECIPE = (
    *(flag for name, value in book_recipe().items() for flag in (f"--{name}", value)),
    "--eval_strategy", "epoch", "--save_strategy", "no", "--evaluate_held_out", "false", "--logging_steps", "50",
    "--overwrite_output_dir", "true",
)  # fmt: skip
# --quick: a 2-block, 32-dim random GPT-2 for one epoch, with a learning rate that moves it in that time.
QUICK = (
    "--model_name_or_path", "gpt2", "--init", "random", "--config_overrides", "n_layer=2,n_head=2,n_embd=32",
    "--num_train_epochs", "1", "--learning_rate", "2e-3",
)  # fmt: skip
GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
PADDING_ONLY = (
    "hf_spam reads the last real token and masks the pads, so with right padding and a causal mask the padded "
    "length changes the compute only"
)


class ExperimentError(RuntimeError):
    """The base model or data of every row is unusable: the first row to run says why."""


@dataclass(frozen=True)
class Row:
    number: int
    setting: str
    book: tuple[float, float, float]  # train, validation, test accuracy (%) in the book's README
    flags: tuple[str, ...] = ()
    model: str | None = None  # the rows about model size: another GPT-2 than gpt2-small
    same_as: int | None = None  # hf_spam computes exactly that row's run
    reason: str | None = None  # why same_as, or why the row is not run


ROWS = (
    Row(1, "last token, last_block, padded to the longest training message", (96.63, 99.33, 95.00), ("--padding", "max_length")),
    Row(2, "first token", (78.46, 80.54, 75.00), ("--pooling", "first")),
    Row(3, "last_layer (head only)", (78.65, 79.87, 72.00), ("--trainable", "last_layer")),
    Row(4, "last_two_blocks", (98.85, 98.66, 98.33), ("--trainable", "last_two_blocks")),
    Row(5, "all layers", (99.62, 96.64, 96.67), ("--trainable", "all")),
    Row(6, "gpt2-medium, last_block", (87.50, 91.28, 84.67), model="gpt2-medium"),
    Row(7, "gpt2-large, last_block", (99.52, 98.66, 96.67), model="gpt2-large"),
    Row(8, "gpt2-xl, last_block", (99.81, 99.81, 98.33), model="gpt2-xl"),
    Row(9, "gpt2-xl, all", (100.00, 98.66, 98.67), ("--trainable", "all"), model="gpt2-xl"),
    Row(10, "random weights, all", (100.00, 96.64, 93.67), ("--init", "random", "--trainable", "all")),
    Row(11, "LoRA r=16 alpha=16", (100.00, 97.32, 96.67), ("--trainable", "lora", "--lora_r", "16", "--lora_alpha", "16")),
    Row(12, "gpt2-xl, LoRA r=16 alpha=8", (100.00, 98.66, 98.33), ("--trainable", "lora", "--lora_r", "16", "--lora_alpha", "8"), model="gpt2-xl"),
    Row(13, "padded to the model context", (83.08, 87.92, 78.33), same_as=1, reason=PADDING_ONLY),
    Row(14, "no padding, batch size 1", (100.00, 98.66, 98.00), ("--per_device_train_batch_size", "1")),
    Row(15, "no padding, batch 1, 8 accumulation steps", (99.33, 98.66, 98.33), ("--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "8")),
    Row(16, 'last non-padding token ("flexible")', (99.42, 98.66, 98.33), same_as=1, reason="hf_spam's `pooling: last` is the book's flexible last token, in every row"),
    Row(17, "no causal mask", (99.23, 98.66, 95.33), ("--causal_mask", "false")),
    Row(18, "`ignore_index` for padding", (96.63, 99.33, 95.00), same_as=1, reason="the loss has one target per message, so no padded target exists to ignore"),
    Row(19, "last token + average of all tokens", (97.79, 99.33, 96.33), ("--pooling", "last_mean")),
)  # fmt: skip
ROWS_BY_NUMBER = {row.number: row for row in ROWS}


@dataclass
class Result:
    number: int
    setting: str
    book: dict[str, float]
    status: str  # ran, failed, same_as, not_run
    flags: list[str] = field(default_factory=list)
    train: float | None = None
    validation: float | None = None
    test: float | None = None
    test_f1: float | None = None
    seconds: float | None = None
    train_runtime: float | None = None
    trainable_parameters: int | None = None
    same_as: int | None = None
    reason: str | None = None
    output_dir: str | None = None
    user_error: bool = False


def parse_rows(text: str | None) -> list[Row]:
    if not text:
        return list(ROWS)
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        numbers = []
    unknown = [n for n in numbers if n not in ROWS_BY_NUMBER]
    if not numbers or unknown:
        raise ValueError(f"--rows: comma-separated row numbers 1-{len(ROWS)}, got {text!r}")
    return [ROWS_BY_NUMBER[n] for n in dict.fromkeys(numbers)]


def row_flags(row: Row, model: str, quick: bool, dedupe: bool) -> tuple[list[str] | None, str | None]:
    """The train flags of `row` on `model`, or (None, why it is not run)."""
    base = [*RECIPE, *(QUICK if quick else ("--model_name_or_path", model)), "--dedupe", str(dedupe).lower()]
    if row.model is not None:
        if quick or model not in GPT2_SIZES:
            return None, f"a row about GPT-2's size ({row.model}); it applies to --model gpt2 (with Hub access)"
        base += ["--model_name_or_path", row.model]
    return [*base, *row.flags], None


def run_row(row: Row, flags: list[str], output_dir: Path) -> Result:
    """One training run (`train.main`, as `hf-spam train` runs it), its output in `output_dir/train.log`."""
    from hf_spam.training.run import USER_ERRORS
    from hf_spam.training.run import main as train_main

    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "train.log"
    result = Result(row.number, row.setting, _book(row), "ran", flags=flags, output_dir=str(output_dir))
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            summary = train_main([*flags, "--output_dir", str(output_dir)])
        except USER_ERRORS as err:
            summary, result.status, result.reason = None, "failed", f"{type(err).__name__}: {err}"
            result.user_error = True
        except Exception as err:  # kept in the log with its traceback; the table says the row failed
            traceback.print_exc(file=f)
            summary, result.status, result.reason = None, "failed", f"{type(err).__name__}: {err} (log: {log})"
    gc.collect()  # the row's model and trainer, before the next row builds its own
    result.seconds = round(time.perf_counter() - started, 1)
    if summary is None:
        return result
    metrics = summary["metrics"]
    result.train, result.validation, result.test = (metrics[s]["accuracy"] for s in ("train", "validation", "test"))
    result.test_f1 = metrics["test"]["f1"]
    result.train_runtime = summary["train"].get("train_runtime")
    result.trainable_parameters = summary.get("model_card", {}).get("trainable_parameters")
    return result


def _book(row: Row) -> dict[str, float]:
    return dict(zip(("train", "validation", "test"), row.book, strict=True))


def experiments(
    model: str, rows: list[Row], output_dir: Path, quick: bool = False, dedupe: bool = True, echo=print
) -> dict:
    """Run `rows` one after another; write and return the table (also after each row, so a stopped run keeps
    what it measured)."""
    from hf_spam.reports.bench_predict import machine

    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": "tiny random GPT-2 (--quick)" if quick else model,
        "dedupe": dedupe,
        "machine": machine(),
        "recipe": " ".join(RECIPE),
        "rows": [],
    }
    results = kept_results(output_dir / "experiments.json", report)
    for i, row in enumerate(rows, 1):
        prefix = f"[{i}/{len(rows)}] row {row.number} ({row.setting})"
        if row.same_as is not None:
            result = Result(row.number, row.setting, _book(row), "same_as", same_as=row.same_as, reason=row.reason)
            echo(f"{prefix}: the same run as row {row.same_as}: {row.reason}")
        else:
            flags, why_not = row_flags(row, model, quick, dedupe)
            if flags is None:
                result = Result(row.number, row.setting, _book(row), "not_run", reason=why_not)
                echo(f"{prefix}: not run: {why_not}")
            else:
                echo(f"{prefix}: training ...")
                result = run_row(row, flags, output_dir / f"row-{row.number}")
                if result.status == "ran":
                    echo(
                        f"{prefix}: train {result.train:.4f}, validation {result.validation:.4f}, test "
                        f"{result.test:.4f}, F1 {result.test_f1:.4f}, {result.seconds:.0f} s"
                    )
                else:
                    echo(f"{prefix}: FAILED: {result.reason}")
                    if (
                        result.user_error
                        and row.model is None
                        and not any(r.status == "ran" for r in results.values())
                    ):
                        # The first run of the base model failed on the user's input: every row would.
                        raise ExperimentError(f"row {row.number}: {result.reason}")
        results[row.number] = result
        report["rows"] = [asdict(results[n]) for n in sorted(results)]
        (output_dir / "experiments.json").write_text(json.dumps(report, indent=2) + "\n")
        (output_dir / "experiments.md").write_text(markdown(report))
    return report


def kept_results(path: Path, report: dict) -> dict[int, Result]:
    """The rows an earlier run into the same directory measured, on the same model and split: a run of some
    rows adds to (or replaces rows of) the table instead of starting it again."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if (earlier.get("model"), earlier.get("dedupe")) != (report["model"], report["dedupe"]):
        return {}
    return {r["number"]: Result(**{**r, "book": dict(r["book"])}) for r in earlier.get("rows", [])}


def markdown(report: dict) -> str:
    """The table, beside the book's figures, with what differs from the book said first."""
    rows = {r["number"]: r for r in report["rows"]}
    machine = report["machine"]
    lines = [
        f"# The book's chapter 6 experiments on {report['model']}",
        "",
        f"{machine['date']}, {machine['processor']}, {machine['cpu_count']} CPU cores, torch {machine['torch']}.",
        f"Recipe of every row unless it says otherwise: `{report['recipe']}`.",
        "",
        "Two differences from the book's table:",
        f"1. **Base weights.** The book fine-tunes OpenAI's pretrained GPT-2; this table starts from {report['model']}.",
        "2. **Split.** "
        + (
            "Exact duplicate messages are dropped before splitting (hf_spam's default), so no test message is "
            "also a training message; the book splits with duplicates in (`--no-dedupe` for that)."
            if report["dedupe"]
            else "Duplicates are kept, as in the book (`--no-dedupe`): some test messages are also training messages."
        ),
        "",
        "Accuracy in %. Time: the whole run (model load, data, training, final evaluation of the three splits).",
        "",
        "| # | setting | train | validation | test | test F1 | time | book train | book val | book test |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for number, r in rows.items():
        book = r["book"]
        book_cells = f"{book['train']:.2f} | {book['validation']:.2f} | {book['test']:.2f}"
        if r["status"] == "ran":
            cells = (
                f"{100 * r['train']:.2f} | {100 * r['validation']:.2f} | {100 * r['test']:.2f} | "
                f"{100 * r['test_f1']:.2f} | {r['seconds']:.0f} s"
            )
        elif r["status"] == "same_as" and r["same_as"] in rows and rows[r["same_as"]]["status"] == "ran":
            cells = f"= row {r['same_as']} | | | | "
            notes.append(f"- Row {number}: {r['reason']}.")
        else:
            what = {"failed": "failed", "not_run": "not run", "same_as": f"= row {r['same_as']}"}[r["status"]]
            cells = f"{what} | | | | "
            notes.append(f"- Row {number}: {r['reason']}.")
        lines.append(f"| {number} | {r['setting']} | {cells} | {book_cells} |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="hf-spam experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="Base model of every row (train's model_name_or_path; default: the embedded pretrained SmolLM2-135M).",
    )
    parser.add_argument("--rows", help="Comma-separated row numbers to run (default: all 19).")
    parser.add_argument("--quick", action="store_true", help="A tiny random GPT-2, one epoch a row: for tests.")
    parser.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="Keep duplicates, as the book does.")
    parser.add_argument("--output_dir", type=Path, help="Default: outputs/experiments-MODEL (or -quick).")
    args = parser.parse_args(argv)
    try:
        rows = parse_rows(args.rows)
    except ValueError as err:
        parser.error(str(err))  # exit code 2, one line
    name = "quick" if args.quick else Path(args.model).name
    output_dir = args.output_dir or Path("outputs") / f"experiments-{name}"
    if output_dir.exists() and not output_dir.is_dir():
        print(f"hf-spam experiments: error: --output_dir {output_dir} is a file", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = experiments(args.model, rows, output_dir, quick=args.quick, dedupe=args.dedupe)
    except ExperimentError as err:
        print(f"hf-spam experiments: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output_dir / 'experiments.md'} and {output_dir / 'experiments.json'}")
    failed = [r["number"] for r in report["rows"] if r["status"] == "failed"]
    return 1 if failed else 0
