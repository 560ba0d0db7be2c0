"""The training script: `accelerate launch hf_spam/train.py --config configs/gpt2-small.yaml [--flag value ...]`.

It reads top to bottom in `hf_spam/training/run.py`: parse -> data -> model -> trainer -> evaluate -> save/push.
"""

import sys

from hf_spam.training.run import main, run, train  # noqa: F401  (the script's API: `from hf_spam.train import main`)

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
