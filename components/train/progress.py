"""The Keras callback that reports training as progress lines (components.common.progress) for a pipeline's console."""
from __future__ import annotations

import keras

from components.common import progress


class ProgressLines(keras.callbacks.Callback):
    """Batches done of all epochs' (`progress: train 94/400 batches, epoch 3/10`), rate-limited.

    One instance serves every fit() of a run (the stages of two-stage fine-tuning), so the bar
    runs from the first epoch to the last; a resumed run starts at the epoch it resumes from.
    steps_per_epoch is the plan's count; an epoch that runs longer stays at its end.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, *, write=None, clock=None):
        super().__init__()
        self.epochs = max(1, int(epochs))
        self.steps = max(1, int(steps_per_epoch))
        self.epoch = 0
        self._options = {k: v for k, v in (("write", write), ("clock", clock)) if v is not None}
        self.lines: progress.Progress | None = None

    def _unit(self) -> str:
        return f"batches, epoch {self.epoch + 1}/{self.epochs}"

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)
        done = self.epoch * self.steps
        if self.lines is None:
            self.lines = progress.Progress("train", self.epochs * self.steps, self._unit(), done=done, **self._options)
        else:
            self.lines.set(done, self._unit())

    def on_train_batch_end(self, batch, logs=None):
        if self.lines is not None:
            self.lines.set(self.epoch * self.steps + min(int(batch) + 1, self.steps))

    def on_epoch_end(self, epoch, logs=None):
        if self.lines is not None:
            self.lines.set((int(epoch) + 1) * self.steps)

    def close(self) -> None:
        """The last line (training over, early stopping included)."""
        if self.lines is not None:
            self.lines.close()
