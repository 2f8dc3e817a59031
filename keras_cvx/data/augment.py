"""Per-image AutoAugment and RandAugment for ``tf.data``.

Papers: "AutoAugment: Learning Augmentation Policies from Data", E. D. Cubuk et al., CVPR 2019,
arXiv 1805.09501; "RandAugment: Practical automated data augmentation with a reduced search
space", E. D. Cubuk et al., arXiv 1909.13719; the strong augmentation of "Circumventing
Outliers of AutoAugment with Knowledge Distillation", L. Wei et al., ECCV 2020, arXiv 2003.11342.
The ops are in ``image_ops.py`` (PIL semantics). Reference code: ``tensorflow/tpu``
``models/official/efficientnet/autoaugment.py`` and timm's ``timm/data/auto_augment.py``.

``autoaugment(...)`` and ``rand_augment(...)`` return ``augment(image, seed=None)`` for ONE
image ``[H, W, C]`` (C = 1 or 3; uint8, or floats in [0, 255]); it returns the same shape and
dtype (floats stay unrounded, clipped to [0, 255]). Use it in ``dataset.map`` *before*
batching: every image draws its own sub-policy / op sequence, signs and coin flips, unlike
``keras.layers.RandAugment``, which draws one op sequence per call (per batch).

* AutoAugment: pick one sub-policy uniformly; apply each of its ops ``(name, p, m)`` with
  probability ``p`` at level ``m / 10``, in order. ``policy="imagenet"``: the AutoAugment
  paper's ImageNet policy (25 sub-policies, timm's ``original``); ``"v0"``: ``policy_v0`` of
  the TF TPU EfficientNet code (used by EfficientNet/AdvProp); or a custom sequence of
  sub-policies.
* RandAugment: ``num_ops`` times, pick one op of ``ops`` uniformly (with replacement) and apply
  it (with probability ``apply_probability``, 1 in the paper; timm uses 0.5) at level
  ``magnitude / magnitude_scale``, jittered per op by a normal of std
  ``magnitude_std / magnitude_scale`` (timm's ``mstd``) and clipped to [0, 1]. Default ops: the
  RandAugment paper's 14 (``RANDAUGMENT_PAPER_OPS``).

Level -> argument (``s`` a random sign ±1 per op):

| op | AutoAugment (TF TPU / timm) | RandAugment (ours, identity at level 0) |
| --- | --- | --- |
| Rotate | ``30 level s`` degrees | same |
| ShearX/Y | ``0.3 level s`` | same |
| TranslateX/Y | ``translate_fraction · level · size · s`` | same |
| Color, Contrast, Brightness, Sharpness | factor ``0.1 + 1.8 level`` | ``1 + 0.9 level s`` |
| Posterize | bits ``int(4 level)`` (``v0``); ``PosterizeOriginal``: ``4 + int(4 level)`` (``imagenet``) | ``8 − round(4 level)`` |
| Solarize | threshold ``int(256 level)`` | ``256 − int(256 level)`` |
| SolarizeAdd | ``int(110 level)`` added below 128 | same |
| AutoContrast, Equalize, Invert, Identity | no magnitude | same |

Decisions (the papers leave them open or the reference implementations disagree):
  * The AutoAugment policies keep the mapping they were searched/published with (TF TPU /
    timm); the ImageNet policy uses the "4 + int(4 level)" posterize (the AutoAugment paper's,
    timm's ``PosterizeOriginal``; torchvision uses 8 − round(4 level), the original CIFAR code
    4 − int(4 level)). There, magnitude 0 is not the identity (Color 0 is factor 0.1).
  * RandAugment uses monotone "increasing" mappings (timm's ``*Increasing`` ops, torchvision's
    RandAugment) so that every op is exactly the identity at magnitude 0 and stronger as the
    magnitude grows, the premise of the KD paper's magnitude study. The level is clipped to
    [0, 1], so ``magnitude_scale`` sets how fine the scale is (10, or 30 for the large
    magnitudes of the TF scale) and nothing extrapolates (TF's M = 28 would ask for 11
    posterize bits). The TF TPU list of 16 ops (with Invert, SolarizeAdd, Cutout) is not the
    default; Cutout is not implemented.
  * Translations are a fraction of the image size (timm's relative translate), default 0.45
    (about RandAugment's 100 px on 224 px images). The TF TPU code uses 100 px (RandAugment)
    and 250 px (AutoAugment ``v0``, about 1.12 of a 224 px image): pass
    ``translate_fraction`` for that parity.
  * Empty pixels get ``fill_value`` (128 as in TF TPU; timm uses the dataset mean; for
    digits on black use 0); ``interpolation="nearest"`` as TF TPU (timm: bilinear/bicubic).
  * uint8 images are rounded after every op (as a uint8 pipeline); float images are clipped to
    [0, 255] on entry and not rounded (every op maps [0, 255] into itself).

Randomness: with ``seed=None`` in the call, ``augment`` draws a per-image seed from a
``tf.random.Generator`` created from the factory's ``seed``, so ``dataset.map(augment)`` is
reproducible when the map runs sequentially (with ``num_parallel_calls`` the draws are handed
out in execution order). For reproducible parallel maps give each element its own seed, e.g.
``dataset.enumerate().map(lambda i, x: augment(x, seed=tf.stack([seed, i])), num_parallel_calls=...)``;
everything inside uses stateless random ops of that seed.

Implementation: every op slot is one ``tf.switch_case`` over the op table inside a shared
``tf.function`` (AutoAugment's sub-policies become [S, L] look-up tables of op index,
probability and level), which keeps the traced ``tf.data`` graph small: about 0.25 ms per
28x28 image for RandAugment N = 2 or AutoAugment on the 2-core development CPU.
"""

import tensorflow as tf

from keras_cvx.data import image_ops
from keras_cvx.validation import require_choice, require_positive, require_positive_int, require_unit_interval

RANDAUGMENT_PAPER_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)

POLICIES = {
    "imagenet": (
        (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
        (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
        (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
        (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
        (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
        (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
        (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
        (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
        (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
        (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    ),
    "v0": (
        (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
        (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
        (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
        (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
        (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
        (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
        (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
        (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
        (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
        (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
        (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
        (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
        (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
        (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
        (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
        (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
        (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
        (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
        (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
        (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
        (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
        (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
        (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
        (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
        (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
    ),
}

AUTOAUGMENT_MAX_MAGNITUDE = 10


class _Geometry:
    """Settings of the ops that move pixels."""

    def __init__(self, fill_value, interpolation, translate_fraction):
        if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)) or not 0 <= fill_value <= 255:
            raise ValueError(f"`fill_value` must be a number in [0, 255], got {fill_value!r}.")
        self.fill_value = float(fill_value)
        self.interpolation = require_choice("interpolation", interpolation, image_ops.INTERPOLATIONS)
        self.translate_fraction = require_positive("translate_fraction", translate_fraction)

    def rotate(self, image, level, sign):
        return image_ops.rotate(image, 30.0 * level * sign, self.fill_value, self.interpolation)

    def shear_x(self, image, level, sign):
        return image_ops.shear_x(image, 0.3 * level * sign, self.fill_value, self.interpolation)

    def shear_y(self, image, level, sign):
        return image_ops.shear_y(image, 0.3 * level * sign, self.fill_value, self.interpolation)

    def translate_x(self, image, level, sign):
        pixels = self.translate_fraction * level * sign * tf.cast(tf.shape(image)[1], tf.float32)
        return image_ops.translate_x(image, pixels, self.fill_value, self.interpolation)

    def translate_y(self, image, level, sign):
        pixels = self.translate_fraction * level * sign * tf.cast(tf.shape(image)[0], tf.float32)
        return image_ops.translate_y(image, pixels, self.fill_value, self.interpolation)


def _shared_ops(geometry):
    """Ops whose level -> argument mapping is the same in both methods: ``fn(image, level, sign)``."""
    return {
        "Identity": lambda image, level, sign: image,
        "AutoContrast": lambda image, level, sign: image_ops.auto_contrast(image),
        "Equalize": lambda image, level, sign: image_ops.equalize(image),
        "Invert": lambda image, level, sign: image_ops.invert(image),
        "Rotate": geometry.rotate,
        "ShearX": geometry.shear_x,
        "ShearY": geometry.shear_y,
        "TranslateX": geometry.translate_x,
        "TranslateY": geometry.translate_y,
        "SolarizeAdd": lambda image, level, sign: image_ops.solarize_add(image, tf.floor(110.0 * level)),
    }


ENHANCE_OPS = {
    "Color": image_ops.color,
    "Contrast": image_ops.contrast,
    "Brightness": image_ops.brightness,
    "Sharpness": image_ops.sharpness,
}


def autoaugment_ops(geometry):
    """AutoAugment's ops with the TF TPU / timm level mappings."""
    ops = _shared_ops(geometry)
    for name, enhance in ENHANCE_OPS.items():
        ops[name] = lambda image, level, sign, enhance=enhance: enhance(image, 0.1 + 1.8 * level)
    ops["Posterize"] = lambda image, level, sign: image_ops.posterize(image, tf.floor(4.0 * level))
    ops["PosterizeOriginal"] = lambda image, level, sign: image_ops.posterize(image, 4.0 + tf.floor(4.0 * level))
    ops["Solarize"] = lambda image, level, sign: image_ops.solarize(image, tf.floor(256.0 * level))
    return ops


def rand_augment_ops(geometry):
    """RandAugment's ops with mappings that are the identity at level 0."""
    ops = _shared_ops(geometry)
    for name, enhance in ENHANCE_OPS.items():
        ops[name] = lambda image, level, sign, enhance=enhance: enhance(image, 1.0 + 0.9 * level * sign)
    ops["Posterize"] = lambda image, level, sign: image_ops.posterize(image, 8.0 - tf.round(4.0 * level))
    ops["Solarize"] = lambda image, level, sign: image_ops.solarize(image, 256.0 - tf.floor(256.0 * level))
    return ops


def autoaugment(policy="imagenet", fill_value=128, interpolation="nearest", translate_fraction=0.45, seed=None):
    """Returns ``augment(image, seed=None)``: one AutoAugment sub-policy per image.

    Args:
        policy: ``"imagenet"``, ``"v0"`` or a sequence of sub-policies, each a sequence of
            ``(op_name, probability, magnitude 0..10)`` (op names: keys of ``autoaugment_ops``).
        fill_value: value of pixels moved in from outside the image (0..255).
        interpolation: ``"nearest"`` or ``"bilinear"`` for rotate/shear/translate.
        translate_fraction: largest translation (level 1), as a fraction of the image size.
        seed: seeds the generator used when ``augment`` is called without a seed.
    """
    table = autoaugment_ops(_Geometry(fill_value, interpolation, translate_fraction))
    sub_policies = _check_policy(policy, table)
    # Sub-policies as [S, L] tables (shorter ones padded with Identity of probability 0), so
    # each image needs L look-ups and L op dispatches instead of a branch per sub-policy.
    names = sorted({name for sub_policy in sub_policies for name, _, _ in sub_policy} | {"Identity"})
    length = max(len(sub_policy) for sub_policy in sub_policies)
    padded = [list(sub_policy) + [("Identity", 0.0, 0.0)] * (length - len(sub_policy)) for sub_policy in sub_policies]
    op_index = tf.constant([[names.index(name) for name, _, _ in row] for row in padded], tf.int32)
    probability = tf.constant([[p for _, p, _ in row] for row in padded], tf.float32)
    level = tf.constant([[m / AUTOAUGMENT_MAX_MAGNITUDE for _, _, m in row] for row in padded], tf.float32)
    dispatch = _dispatcher([table[name] for name in names])
    identity = names.index("Identity")

    def augment_one(image, seed, quantize):
        choice_seed, ops_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        row = tf.random.stateless_uniform([], seed=choice_seed, maxval=len(sub_policies), dtype=tf.int32)
        uniforms = tf.random.stateless_uniform([length, 2], seed=ops_seed)
        for i in range(length):
            index = tf.where(uniforms[i, 0] < probability[row, i], op_index[row, i], identity)
            image = _round_if(dispatch(image, index, level[row, i], _sign(uniforms[i, 1])), quantize)
        return image

    return _per_image(augment_one, seed)


def rand_augment(
    num_ops=2,
    magnitude=9,
    magnitude_scale=10,
    magnitude_std=0.0,
    apply_probability=1.0,
    ops=RANDAUGMENT_PAPER_OPS,
    fill_value=128,
    interpolation="nearest",
    translate_fraction=0.45,
    seed=None,
):
    """Returns ``augment(image, seed=None)``: ``num_ops`` random ops per image.

    Args:
        num_ops: ``N``, ops applied in sequence (each drawn uniformly, with replacement).
        magnitude: ``M`` in ``[0, magnitude_scale]``; level ``M / magnitude_scale``.
        magnitude_scale: the magnitude of level 1 (10 in the paper's notation, 30 in some code).
        magnitude_std: std of the per-op normal jitter of ``M`` (0: fixed magnitude).
        apply_probability: probability that a drawn op is applied (1 in the paper).
        ops: op names, a subset of the keys of ``rand_augment_ops``.
        fill_value, interpolation, translate_fraction: as in ``autoaugment``.
        seed: seeds the generator used when ``augment`` is called without a seed.
    """
    table = rand_augment_ops(_Geometry(fill_value, interpolation, translate_fraction))
    num_ops = require_positive_int("num_ops", num_ops)
    magnitude_scale = require_positive("magnitude_scale", magnitude_scale)
    if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= magnitude_scale:
        raise ValueError(f"`magnitude` must be a number in [0, magnitude_scale={magnitude_scale}], got {magnitude!r}.")
    if isinstance(magnitude_std, bool) or not isinstance(magnitude_std, (int, float)) or magnitude_std < 0:
        raise ValueError(f"`magnitude_std` must be a number >= 0, got {magnitude_std!r}.")
    apply_probability = require_unit_interval("apply_probability", apply_probability, include_one=True)
    if isinstance(ops, str) or not ops or any(name not in table for name in ops):
        raise ValueError(f"`ops` must be a non-empty sequence of names from {sorted(table)}, got {ops!r}.")
    # The last branch is the identity taken when a drawn op is not applied.
    dispatch = _dispatcher([table[name] for name in ops] + [table["Identity"]])

    def augment_one(image, seed, quantize):
        uniform_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        uniforms = tf.random.stateless_uniform([num_ops, 3], seed=uniform_seed)
        jitter = tf.random.stateless_normal([num_ops], seed=normal_seed) * magnitude_std
        levels = tf.clip_by_value((magnitude + jitter) / magnitude_scale, 0.0, 1.0)
        drawn = tf.minimum(tf.cast(uniforms[:, 0] * len(ops), tf.int32), len(ops) - 1)
        indices = tf.where(uniforms[:, 1] < apply_probability, drawn, len(ops))
        for i in range(num_ops):
            image = _round_if(dispatch(image, indices[i], levels[i], _sign(uniforms[i, 2])), quantize)
        return image

    return _per_image(augment_one, seed)


def _dispatcher(functions):
    """``dispatch(image, index, level, sign) = functions[index](image, level, sign)``; one
    ``tf.function`` shared by all op slots keeps the traced graph small."""

    @tf.function
    def dispatch(image, index, level, sign):
        return tf.switch_case(index, [lambda fn=fn: fn(image, level, sign) for fn in functions])

    return dispatch


def _round_if(image, quantize):
    return tf.round(image) if quantize else image


def _sign(uniform):
    return tf.where(uniform < 0.5, -1.0, 1.0)


def _per_image(augment_one, seed):
    """Wraps ``augment_one(float_image, seed[2], quantize)`` into the public ``augment``."""
    generator = tf.random.Generator.from_non_deterministic_state() if seed is None else tf.random.Generator.from_seed(seed)

    def augment(image, seed=None):
        image = tf.convert_to_tensor(image)
        if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"`image` must be one [H, W, C] image with C = 1 or 3, got shape {image.shape}.")
        element_seed = generator.make_seeds(1)[:, 0] if seed is None else tf.cast(seed, tf.int64)
        quantize = image.dtype.is_integer
        pixels = tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0)
        augmented = augment_one(pixels, element_seed, quantize)
        return tf.ensure_shape(tf.cast(augmented, image.dtype), image.shape)

    return augment


def _check_policy(policy, ops):
    if isinstance(policy, str):
        return POLICIES[require_choice("policy", policy, tuple(POLICIES))]
    try:
        sub_policies = tuple(tuple((name, float(p), float(m)) for name, p, m in sub_policy) for sub_policy in policy)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`policy` must be a name or a sequence of sequences of (op, probability, magnitude), got {policy!r}.") from error
    for sub_policy in sub_policies:
        for name, p, m in sub_policy:
            if name not in ops or not 0 <= p <= 1 or not 0 <= m <= AUTOAUGMENT_MAX_MAGNITUDE:
                raise ValueError(
                    f"`policy` entries must be (op in {sorted(ops)}, probability in [0, 1], magnitude in [0, 10]), got {(name, p, m)!r}."
                )
    if not sub_policies or not all(sub_policies):
        raise ValueError(f"`policy` must hold at least one non-empty sub-policy, got {policy!r}.")
    return sub_policies
