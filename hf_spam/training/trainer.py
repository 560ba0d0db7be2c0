"""`SpamTrainer`: a `Trainer` whose loss reads the logits of the last real token of each message (or the
positions another `pooling` names)."""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_spam.models.pooling import pool_padded, pooling_of
from hf_spam.training.checkpoints import CheckpointSaveError


class _TokenLogits:
    """Keeps the per-token logits that `score` computes inside the model's forward.

    `GPT2ForSequenceClassification` pools them itself at the rightmost non-pad *id*; we want the position the
    attention mask says. Reading them from a hook on `score` keeps the forward call on the (possibly
    DDP-wrapped) model, so gradients are still synchronised, and costs no extra compute.
    """

    def __init__(self, score: torch.nn.Module):
        self.value = None
        self._handle = score.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.value = output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


class SpamTrainer(Trainer):
    """Cross-entropy on the logits of the last real token: the book's `calc_loss_batch`
    (`model(x)[:, -1, :]`), done right for padded batches; or of the positions the model's `pooling` names.
    Optional `class_weights` for unbalanced data."""

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        # Gradient accumulation: we return the *sum* of per-example losses divided by `num_items_in_batch`,
        # the number of examples in the whole accumulation window (counted over all processes). Each step then
        # equals the mean over the equivalent large batch, even when the last window is short. Trainer only
        # counts the window when it believes the model takes loss kwargs, and must not divide again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        unwrapped = self.accelerator.unwrap_model(model)
        if getattr(unwrapped, "returns_pooled_logits", False):  # the trunk cache's tail pools by itself
            logits = model(**inputs).logits
        else:
            with _TokenLogits(unwrapped.score) as token_logits:
                model(**inputs)
            logits = pool_padded(token_logits.value, inputs["attention_mask"], pooling_of(unwrapped.config))
        weight = None if self.class_weights is None else self.class_weights.to(logits)
        smoothing = self.args.label_smoothing_factor  # Trainer applies it only to a loss it computes itself
        loss = F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum", label_smoothing=smoothing)
        if num_items_in_batch is None:  # evaluation, or a caller that doesn't count: a plain mean
            loss = loss / labels.shape[0]
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # Trainer counted the window over every process, and DDP averages gradients over processes:
                # scale back up so each process contributes its sum / global count.
                loss = loss * self.accelerator.num_processes
        outputs = SequenceClassifierOutput(loss=loss, logits=logits)
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # When training from cached trunk states the model is a `FrozenTrunkTail`; what we save (checkpoints,
        # the final model, the Hub push) is always the whole `GPT2ForSequenceClassification` it trains.
        classifier = getattr(self.accelerator.unwrap_model(self.model), "classifier", None)
        if classifier is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            classifier.save_pretrained(output_dir, is_main_process=True)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        # A full disk surfaces as OSError, SafetensorError or a RuntimeError from torch that names no cause;
        # say what happened and that the earlier checkpoints are intact (resume skips the partial one).
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            reason = (str(err).strip().splitlines() or [""])[0]
            free_mib = shutil.disk_usage(self.args.output_dir).free / 2**20
            raise CheckpointSaveError(
                f"could not write {folder} ({type(err).__name__}: {reason}); {free_mib:,.0f} MiB free on its disk. "
                "Is the disk full, or a file-size limit (ulimit -f) reached? The earlier checkpoints are intact: "
                "make room and continue with --resume_from_checkpoint auto"
            ) from err

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # A checkpoint holds the whole classifier (see `_save`); load it into the classifier the tail shares.
        model = model if model is not None else self.model
        super()._load_from_checkpoint(resume_from_checkpoint, model=getattr(model, "classifier", model))
