#!/usr/bin/env bash
# The throughput table of docs/batch.md: hf-spam predict against hf-spam score with 1 and 2 actors, on the same
# N distinct messages (the collection repeated, " #i" appended), one command after the other.
#   scripts/bench_score.sh MODEL_DIR [N] [WORK_DIR]
set -euo pipefail
MODEL=${1:?a model directory}; N=${2:-100000}; WORK=${3:-$(mktemp -d)}
BIN=${BIN:-.venv/bin}
"$BIN/python" - "$N" "$WORK" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from hf_spam.data.collection import bundled_data_file

n, work = int(sys.argv[1]), Path(sys.argv[2])
texts = [line.split("\t", 1)[1] for line in bundled_data_file().read_text(encoding="utf-8").splitlines()]
rows = [f"{texts[i % len(texts)]} #{i}" for i in range(n)]
(work / "in").mkdir(parents=True, exist_ok=True)
for k in range(4):
    part = slice(k * n // 4, (k + 1) * n // 4)
    pd.DataFrame({"id": range(n)[part], "text": rows[part]}).to_parquet(work / "in" / f"part-{k}.parquet")
(work / "lines.txt").write_text("\n".join(r.replace("\n", " ") for r in rows) + "\n", encoding="utf-8")
PY
start=$(date +%s%N)
"$BIN/hf-spam" predict --model "$MODEL" < "$WORK/lines.txt" > "$WORK/predict.out"
echo "predict: $(( ($(date +%s%N) - start) / 1000000 )) ms wall, $(grep -c '"spam"' "$WORK/predict.out") spam"
for actors in 1 2; do
    rm -rf "$WORK/out$actors"
    start=$(date +%s%N)
    "$BIN/hf-spam" score --model "$MODEL" --input "$WORK/in" --output "$WORK/out$actors" --actors "$actors" \
        --num_cpus "$(nproc)" > /dev/null 2> "$WORK/score$actors.err"
    echo "score, $actors actor(s): $(( ($(date +%s%N) - start) / 1000000 )) ms wall; _SUCCESS: $(tr -d '\n ' < "$WORK/out$actors/_SUCCESS")"
done
