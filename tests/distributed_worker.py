"""Run by accelerate launch (or torchrun), once per rank: train, then record what this rank ended with in OUT_DIR/rank<R>.json."""

import json
import os
import sys
from pathlib import Path

from hf_spam.training.run import main

if __name__ == "__main__":
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    summary = main(argv)
    record = {key: summary[key] for key in ("weights_sha256", "world_size", "metrics", "train")}
    (out_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
