"""The trained network (preprocessing, backbone, head) and the fine-tuning policies that choose which layers learn."""
from __future__ import annotations

from dataclasses import dataclass

from components.common.model import OUTPUT_NAMES, TASKS
from components.train import backbones


@dataclass(frozen=True)
class FineTune:
    """A parsed --fine-tune value."""

    policy: str  # head | last | full | two-stage
    last_n: int = 0  # last: how many convolution/dense layers of the backbone learn
    head_epochs: int = 0  # two-stage: epochs of head-only training before the backbone unfreezes (0 = a third)

    def __str__(self) -> str:
        if self.policy == "last":
            return f"last:{self.last_n}"
        if self.policy == "two-stage" and self.head_epochs:
            return f"two-stage:{self.head_epochs}"
        return self.policy


FINE_TUNE_HELP = (
    "head (backbone frozen), last:N (the backbone's last N convolution/dense layers learn), "
    "full (all learn; the backbone at a lower learning rate), two-stage or two-stage:E "
    "(head alone for E epochs, default a third, then full)"
)


def parse_fine_tune(text: str) -> FineTune:
    """'head' | 'last:N' | 'full' | 'two-stage[:E]' -> FineTune; raises ValueError saying what is expected."""
    t = str(text).strip().lower()
    name, _, arg = t.partition(":")
    try:
        if name == "head" and not arg:
            return FineTune("head")
        if name == "full" and not arg:
            return FineTune("full")
        if name == "last" and arg and int(arg) > 0:
            return FineTune("last", last_n=int(arg))
        if name == "two-stage" and (not arg or int(arg) > 0):
            return FineTune("two-stage", head_epochs=int(arg) if arg else 0)
    except ValueError:
        pass
    raise ValueError(f"--fine-tune {text!r}: expected {FINE_TUNE_HELP}")


def build_model(
    spec: backbones.Backbone,
    *,
    task: str,
    num_outputs: int,
    image_size: int,
    weights: str | None,
    dropout: float,
    l2: float,
    bn_momentum: float | None,
):
    """Input 0..255 RGB float32 [N, S, S, 3] -> preprocessing -> backbone -> dropout -> sigmoid AUs or linear V/A.

    The head is float32 even under mixed precision, so probabilities are exact enough to threshold.
    """
    import keras

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected au (Action Units) or va (valence/arousal)")
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = inputs
    for layer in backbones.preprocessing_layers(spec):
        x = layer(x)
    backbone = backbones.build(spec, image_size, weights, bn_momentum=bn_momentum, l2=l2)
    x = backbone(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    # Sigmoid per AU, never softmax: several AUs are active at once (the study measured it).
    activation = "sigmoid" if task == "au" else None
    outputs = keras.layers.Dense(
        num_outputs, activation=activation, kernel_regularizer=regularizer, dtype="float32", name=OUTPUT_NAMES[task]
    )(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_{task}")


def backbone_of(model):
    """The keras.applications model nested in a model build_model made (its one nested Model)."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"model {model.name} has {len(nested)} nested backbones; expected one")
    return nested[0]


def _set_trainable(layer, value: bool) -> None:
    """Sets trainable on a layer and on every layer nested in it.

    Keras on TensorFlow skips `layer.trainable = v` when v is already the layer's value (a
    trackable shortcut), so a nested model would keep the flags an earlier policy gave its
    layers: each one is set here.
    """
    import keras

    layer.trainable = value
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            _set_trainable(inner, value)


def apply_fine_tune(model, policy: str, last_n: int = 0) -> list:
    """Sets which layers train for one policy; returns the backbone variables that step at the lower learning rate.

    policy is head, last or full (a two-stage run applies head, then full). Frozen
    BatchNormalization layers run in inference mode, as fine-tuning needs.
    """
    import keras

    backbone = backbone_of(model)
    for layer in model.layers:
        if layer is backbone or isinstance(layer, keras.layers.InputLayer):
            continue
        # Preprocessing is fixed arithmetic; the head always learns.
        _set_trainable(layer, not layer.name.startswith("preprocess_"))
    if policy == "head":
        _set_trainable(backbone, False)
        return []
    if policy == "full":
        _set_trainable(backbone, True)
        return list(backbone.trainable_variables)
    if policy == "last":
        weighted = backbones.weighted_layers(backbone)
        if last_n > len(weighted):
            raise ValueError(
                f"--fine-tune last:{last_n}: backbone {backbone.name} has only {len(weighted)} convolution/dense layers"
            )
        _set_trainable(backbone, True)
        layers = list(backbones.iter_layers(backbone))
        first = layers.index(weighted[-last_n])
        for i, layer in enumerate(layers):
            # Everything from the N-th last weighted layer on learns (its BatchNorms included).
            _set_trainable(layer, i >= first)
        return []
    raise ValueError(f"unknown fine-tune policy {policy!r}")
