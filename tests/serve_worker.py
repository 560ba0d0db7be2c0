"""A server whose every model call takes at least a second: for the SIGTERM test (requests in flight finish)."""

import sys
import time

import uvicorn

from hf_spam.deploy.classifier import load_classifier
from hf_spam.deploy.serve import create_app

model_dir, port = sys.argv[1], int(sys.argv[2])
predict = load_classifier(model_dir)
probabilities = predict.probabilities


def slow(texts):
    print("batch started", flush=True)
    time.sleep(1.0)
    return probabilities(texts)


predict.probabilities = slow
app = create_app(model_dir, predict=predict)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
