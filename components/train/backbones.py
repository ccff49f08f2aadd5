"""The keras.applications backbones train can fine-tune: their input sizes, preprocessing, weights and BatchNorm."""
from __future__ import annotations

import os
from dataclasses import dataclass

# Preprocessing modes, as keras.applications names them. The model takes RGB pixels in
# 0..255 whatever the backbone, so the exported graph and every caller feed the same thing.
CAFFE = "caffe"  # RGB -> BGR, minus the ImageNet channel means (VGG16, ResNet50)
TF = "tf"  # scaled to -1..1 (InceptionV3)
BUILT_IN = "built-in"  # the backbone rescales its own input (EfficientNetV2, MobileNetV3)

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    """What train needs to know about one keras.applications backbone."""

    name: str  # lower-case function name, as the CLI and the DAG take it
    function: str  # keras.applications attribute, or a builder in this module
    default_size: int  # the input side it was trained on
    min_size: int  # smallest input side it builds at
    preprocessing: str
    default_batch_size: int  # the study's: 128, and 32 for VGG16 (memory)
    extra_kwargs: tuple = ()


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("vgg16", "VGG16", 224, 32, CAFFE, 32),
        # Inception V2 (the study's) is not in keras.applications; V3 is its successor.
        Backbone("inceptionv3", "InceptionV3", 299, 75, TF, 128),
        Backbone("resnet50", "ResNet50", 224, 32, CAFFE, 128),
        Backbone("efficientnetv2b0", "EfficientNetV2B0", 224, 32, BUILT_IN, 128, (("include_preprocessing", True),)),
        Backbone("mobilenetv3small", "MobileNetV3Small", 224, 32, BUILT_IN, 128, (("include_preprocessing", True),)),
        # Not from keras.applications: a small network that learns from scratch on a CPU in
        # minutes (the demo's default), where no ImageNet weights can be downloaded. 128 px is
        # the demo faces' own size: at 96 px macro F1 fell from 0.86 to 0.83.
        Backbone("compactcnn", "CompactCNN", 128, 32, BUILT_IN, 32),
    )
}


def get(name: str) -> Backbone:
    """The backbone called `name`; raises ValueError listing the valid names."""
    key = str(name).strip().lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[key]


def resolve_weights(weights: str, workdir: str) -> str | None:
    """`imagenet`, None (random init) or a local weights file path (a gs:// file is copied into workdir first)."""
    from components.common import storage

    w = str(weights).strip()
    if w.lower() in ("", "none", "random", "scratch"):
        return None
    if w.lower() == "imagenet":
        return "imagenet"
    if storage.is_gcs(w):
        if not storage.exists(w):
            raise FileNotFoundError(
                f"--weights {w}: no such object; expected a Keras weights file (.weights.h5 or .h5)"
            )
        return storage.local_copy(w, workdir)
    if not os.path.isfile(w):
        raise FileNotFoundError(
            f"--weights {w}: no such file; expected imagenet, none, or a Keras weights file "
            "(.weights.h5, or a keras.applications *_notop.h5 file) of the backbone without its top"
        )
    return w


def build(
    spec: Backbone,
    image_size: int,
    weights: str | None,
    bn_momentum: float | None = None,
    l2: float = 0.0,
):
    """The backbone without its classifier, global-average pooled, taking preprocessed pixels.

    bn_momentum, when given, replaces every BatchNormalization layer's momentum: a
    backbone trained from scratch for a few hundred steps needs moving statistics that
    settle in that time (keras.applications' MobileNetV3 keeps 0.999, so its inference
    statistics barely move). l2 attaches an L2 penalty to every convolution and dense kernel.
    """
    import keras

    if image_size < spec.min_size:
        raise ValueError(
            f"backbone {spec.name} needs an input of at least {spec.min_size} px; got --image-size {image_size}"
        )
    fn = globals()[spec.function] if spec.function in _BUILDERS else getattr(keras.applications, spec.function)
    model = fn(
        include_top=False,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        **dict(spec.extra_kwargs),
    )
    for layer in iter_layers(model):
        if bn_momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(bn_momentum)
        if l2 > 0 and _has_kernel(layer):
            for attr in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                var = getattr(layer, attr, None)
                if var is not None:
                    # The penalty rides on the variable, so it counts only while the layer trains.
                    var.regularizer = keras.regularizers.L2(l2)
    return model


def preprocessing_layers(spec: Backbone):
    """Keras layers mapping 0..255 RGB to what the backbone expects.

    Standard layers only, so model.keras loads without this package.
    """
    import keras
    import numpy as np

    if spec.preprocessing == TF:
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf", dtype="float32")]
    if spec.preprocessing == CAFFE:
        # RGB -> BGR and minus the means as one frozen 1x1 convolution.
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_c in range(3):
            kernel[0, 0, 2 - out_c, out_c] = 1.0
        conv = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name="preprocess_caffe", dtype="float32")
        conv.build((None, None, None, 3))
        conv.set_weights([kernel, -np.array(IMAGENET_BGR_MEAN, dtype="float32")])
        return [conv]
    return []


def iter_layers(model):
    """Every layer of a model, nested models flattened, in order."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        else:
            yield layer


def _has_kernel(layer) -> bool:
    return getattr(layer, "kernel", None) is not None or getattr(layer, "depthwise_kernel", None) is not None


def weighted_layers(model) -> list:
    """Convolution and dense layers of a model, in order: what `last:N` counts."""
    return [layer for layer in iter_layers(model) if _has_kernel(layer)]


def CompactCNN(include_top=False, weights=None, input_shape=None, pooling="avg", widths=(32, 64, 128, 256)):
    """A VGG-like stack of separable convolutions with BatchNorm, for training from scratch on a CPU.

    Same calling convention as keras.applications (include_top must be False, pooling avg);
    the features are the global average plus a coarse grid of averages. BatchNorm momentum
    0.9 lets the inference statistics settle within a few hundred steps.
    """
    import keras
    from keras import layers

    if include_top or pooling != "avg":
        raise ValueError("CompactCNN is a backbone only: include_top=False, pooling='avg'")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i, width in enumerate(widths):
        for j in range(1 if i == 0 else 2):
            name = f"block{i + 1}_conv{j + 1}"
            if i == 0:
                x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=name)(x)
            else:
                x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    # Where a cue sits tells AUs apart that look alike (horizontal lines: AU1 and AU2 on the
    # forehead, AU9 on the nose), so a coarse 3x3 grid of the features joins their global average.
    grid = layers.AveragePooling2D(max(1, int(x.shape[1]) // 3), name="grid_pool")(x)
    x = layers.Concatenate(name="features")(
        [layers.GlobalAveragePooling2D(name="avg_pool")(x), layers.Flatten(name="grid")(grid)]
    )
    model = keras.Model(inputs, x, name="compactcnn")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    elif weights == "imagenet":
        raise ValueError("compactcnn has no ImageNet weights; use --weights none or a weights file")
    return model


_BUILDERS = ("CompactCNN",)
