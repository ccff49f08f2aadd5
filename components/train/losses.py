"""Masked losses and metrics (999 = unknown AU label, NaN = no valence/arousal) and the optimizers train uses."""
from __future__ import annotations

import keras
from keras import ops

from components.common import labels
from components.train.params import OPTIMIZERS

_PACKAGE = "emotionet_au_train"


def known_mask(y_true):
    """1 where an AU label is known (0 or 1), 0 where it is 999."""
    return ops.cast(ops.not_equal(y_true, float(labels.UNKNOWN)), "float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over the known labels only, with a weight per AU on positives.

    The mean runs over known (example, AU) pairs of the batch, so an unknown label adds
    neither loss nor gradient, and a batch with many unknowns is not scaled down.
    """

    def __init__(self, pos_weight=None, epsilon: float = 1e-7, name: str = "masked_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        mask = known_mask(y_true)
        y = y_true * mask  # 999 -> 0: finite, and multiplied away below
        p = ops.clip(y_pred, self.epsilon, 1.0 - self.epsilon)
        pos_w = 1.0 if self.pos_weight is None else ops.convert_to_tensor(self.pos_weight, "float32")
        per_label = -(pos_w * y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.sum(per_label * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMeanSquaredError(keras.losses.Loss):
    """Mean squared error over the valence/arousal values an example has (NaN = none)."""

    def __init__(self, name: str = "masked_mean_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        mask = ops.cast(ops.logical_not(ops.isnan(y_true)), "float32")
        diff = ops.where(mask > 0, y_true - y_pred, 0.0)
        return ops.sum(ops.square(diff)) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedAUC(keras.metrics.AUC):
    """ROC AUC per AU over known labels, averaged over AUs (macro)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = known_mask(y_true)
        return super().update_state(ops.cast(y_true, "float32") * mask, y_pred, sample_weight=mask)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMacroF1(keras.metrics.Metric):
    """F1 per AU at a threshold over known labels, averaged over AUs (0 for an AU without positives or predictions)."""

    def __init__(self, num_labels: int, threshold: float = 0.5, name: str = "f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_labels = int(num_labels)
        self.threshold = float(threshold)
        self.tp = self.add_variable((self.num_labels,), initializer="zeros", name="tp")
        self.fp = self.add_variable((self.num_labels,), initializer="zeros", name="fp")
        self.fn = self.add_variable((self.num_labels,), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = known_mask(y_true)
        y = ops.cast(y_true, "float32") * mask
        pred = ops.cast(ops.greater_equal(ops.cast(y_pred, "float32"), self.threshold), "float32") * mask
        self.tp.assign_add(ops.sum(pred * y, axis=0))
        self.fp.assign_add(ops.sum(pred * (1.0 - y), axis=0))
        self.fn.assign_add(ops.sum((1.0 - pred) * y, axis=0))

    def result(self):
        denom = 2.0 * self.tp + self.fp + self.fn
        f1 = ops.where(denom > 0, 2.0 * self.tp / ops.maximum(denom, 1e-9), 0.0)
        return ops.mean(f1)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            # Not ops.zeros_like(v): jax.numpy (0.11) takes no Keras variable there; this works on every backend.
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMeanAbsoluteError(keras.metrics.Metric):
    """Mean absolute error over the valence/arousal values examples have (NaN = none)."""

    def __init__(self, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        mask = ops.cast(ops.logical_not(ops.isnan(y_true)), "float32")
        diff = ops.where(mask > 0, y_true - ops.cast(y_pred, "float32"), 0.0)
        self.total.assign_add(ops.sum(ops.abs(diff)))
        self.count.assign_add(ops.sum(mask))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


class _BackboneLearningRate:
    """Mixin: the backbone's variables step with learning_rate x multiplier, the head's with learning_rate.

    Keras 3 has no per-variable learning rate; scaling gradients would not do it (RMSprop
    and Adam divide the scale away), so the multiplier is applied where each variable steps.
    """

    def set_backbone_variables(self, variables, multiplier: float):
        # Their keys, not the variables: Keras tracks variables set on an optimizer as its own state,
        # so each checkpoint would hold them twice, and JAX would donate one buffer twice to the step.
        self._backbone_keys = frozenset(self._var_key(v) for v in variables)
        self._backbone_multiplier = float(multiplier)

    def build(self, variables):
        super().build(variables)
        keys = getattr(self, "_backbone_keys", frozenset())
        self._backbone_indices = {i for i, v in enumerate(variables) if self._var_key(v) in keys}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in getattr(self, "_backbone_indices", ()):
            learning_rate = learning_rate * self._backbone_multiplier
        return super().update_step(gradient, variable, learning_rate)


class RMSprop(_BackboneLearningRate, keras.optimizers.RMSprop):
    pass


class Adam(_BackboneLearningRate, keras.optimizers.Adam):
    pass


class AdamW(_BackboneLearningRate, keras.optimizers.AdamW):
    pass


def make_optimizer(
    name: str,
    learning_rate,
    *,
    backbone_variables=(),
    backbone_multiplier: float = 1.0,
    rho: float = 0.9,
    momentum: float = 0.9,
    epsilon: float = 1e-7,
    weight_decay: float = 1e-4,
):
    """rmsprop (the study's: rho 0.9, momentum 0.9), adam or adamw; learning_rate may be a schedule."""
    key = str(name).strip().lower()
    if key == "rmsprop":
        opt = RMSprop(learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon)
    elif key == "adam":
        opt = Adam(learning_rate=learning_rate, epsilon=epsilon)
    elif key == "adamw":
        opt = AdamW(learning_rate=learning_rate, weight_decay=weight_decay, epsilon=epsilon)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if backbone_multiplier != 1.0 and backbone_variables:
        opt.set_backbone_variables(backbone_variables, backbone_multiplier)
    return opt
