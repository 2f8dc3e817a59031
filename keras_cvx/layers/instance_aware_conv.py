"""PointINS's instance-aware convolution, evaluated only at the selected points.

Paper: "PointINS: Point-based Instance Segmentation", L. Qi, X. Zhang, Y. Chen, Y. Chen,
J. Sun, J. Jia, arXiv 2003.06148 (v1 2020; TPAMI 2021): the instance-aware convolution of a
point of interest (PoI) = an instance-agnostic feature (a per-PoI "mask template", shared by
every potential instance at that PoI) convolved with instance-aware weights (generated per
potential instance, i.e. per PoI and anchor).

No code was ever released and the paper body is not available to us: the concrete design here
is an "after PointINS" reading with unverified details (see "Decisions" below). For the box
tower output ``G_l`` of pyramid level ``l`` (``[B, H_l, W_l, C_in]``), a PoI ``p`` and a
weight set (anchor) ``a < A``::

    U_l = Conv3x3(G_l; K_T, b_T)           [B, H_l, W_l, k k C]     "channel up-scaling"
    T_p[u, v, c] = U_l[p, (u k + v) C + c]  k x k x C                "depth-to-space" (template)
    W_l = Conv3x3(G_l; K_W, b_W)           [B, H_l, W_l, A C_w]     instance-aware weights
    W_{p,a} = W_l[p, a C_w : (a + 1) C_w]
    depthwise: F_{p,a}[u, v, c] = T_p[u, v, c] W_{p,a}[c]                   (C_w = C)
    full:      F_{p,a}[u, v, :] = T_p[u, v, :] M_{p,a} + beta_{p,a}         (C_w = C C_out + C_out)

with ``M_{p,a}[c, o] = W_{p,a}[c C_out + o]`` (row-major ``C x C_out``) and
``beta_{p,a}[o] = W_{p,a}[C C_out + o]`` (the matrix first, then the bias). Both 3x3 convs are
"same" convs (zero padding), stride 1, shared by every level.

How it is computed (cost proportional to the number of points P, not to the map size): every
level is zero-padded by one pixel and all levels of all images are flattened into one table
of feature rows ``[B R, C_in]`` (image, level, padded row, padded column; ``R = Σ_l (H_l + 2)
(W_l + 2)``). For each point the 9 rows of its 3x3 neighbourhood (``(dy, dx)`` row-major, the
``(kh, kw)`` order of a Keras ``Conv2D`` kernel ``[3, 3, C_in, C_out]``) are gathered into
``[P, 9 C_in]`` and multiplied once by each kernel reshaped to ``[9 C_in, C_out]``: exactly the
dense convolutions evaluated at those points, with no dense convolution over any map. The A
weight sets are computed for every point (``[P, A C_w]``) and the point's set is then selected.

Decisions (all "(inferred)" in the specification; the paper does not confirm them):

* ``k = 3``, ``C = 256`` and depthwise weights (``C_w = C``) by default; ``A = 1`` for FCOS,
  ``A = 9`` for RetinaNet. ``weight_type="full"`` is the alternative dynamic 1x1 conv.
* Depth-to-space channel order: TensorFlow's ``depth_to_space`` convention, channel
  ``q = (u k + v) C + c`` of the up-scaled conv goes to template position ``(u, v)``, channel
  ``c`` (a plain row-major reshape of the ``k k C`` vector to ``k x k x C``).
* Init: both conv kernels N(0, 0.01), biases 0. No normalisation or activation after either
  conv.
* Out-of-range indices (e.g. padding points) are clamped into range instead of failing:
  ``image_index`` into ``[0, B)``, ``location_index`` into ``[0, Σ_l H_l W_l)`` and
  ``weight_set_index`` into ``[0, A)``; mask such points out downstream.

Parameters at ``C_in = 256``, ``k = 3``, ``C = 256``: template conv 5,310,720; weight conv
590,080 (``A = 1``) or 5,310,720 (``A = 9``).
"""

import keras
import numpy as np
from keras import ops

from keras_cvx.validation import require_choice, require_positive_int

WEIGHT_TYPES = ("depthwise", "full")


@keras.saving.register_keras_serializable(package="keras_cvx")
class InstanceAwareConv(keras.layers.Layer):
    """PointINS instance-aware features ``F_{p,a} = T_p (*) W_{p,a}`` of selected points
    (arXiv 2003.06148; formulas and decisions in the module docstring).

    Args:
        template_size: template side ``k`` (default 3).
        template_channels: template channels ``C`` (default 256).
        num_weight_sets: weight sets ``A`` per location (default 1: FCOS; 9 for RetinaNet's
            anchors).
        weight_type: ``"depthwise"`` (default; ``F[u, v, c] = T[u, v, c] W[c]``) or ``"full"``
            (a dynamic 1x1 conv ``C -> output_channels`` with bias).
        output_channels: ``C_out`` of ``"full"`` (required there); must be None (or equal to
            ``template_channels``) for ``"depthwise"``.

    Weights (built from the levels' ``C_in``): ``template_kernel [3, 3, C_in, k k C]``,
    ``template_bias [k k C]``, ``weights_kernel [3, 3, C_in, A C_w]``, ``weights_bias [A C_w]``
    with ``C_w = C`` (depthwise) or ``C C_out + C_out`` (full), laid out as Keras ``Conv2D``
    kernels (``(kh, kw, in, out)``).

    Call: ``layer(features, image_index, location_index, weight_set_index=None)``:

    * ``features``: list of the ``L`` box-tower maps ``[B, H_l, W_l, C_in]`` (static ``H_l``,
      ``W_l``, ``C_in``), levels in order.
    * ``image_index``: int ``[P]``, the image of each point.
    * ``location_index``: int ``[P]``, the point's location in the level-concatenated,
      row-major (level, row, column) flattening of one image's locations (the order of
      ``keras_cvx.heads.fcos.flatten_levels``).
    * ``weight_set_index``: int ``[P]`` in ``[0, A)`` (None: set 0 for every point).

    Returns ``[P, k, k, C_out]`` in the compute dtype (``C_out = C`` for depthwise).

    Example:

    >>> import numpy as np
    >>> from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
    >>> layer = InstanceAwareConv(template_size=3, template_channels=4, num_weight_sets=9)
    >>> features = [np.ones((2, 8, 8, 16), "float32"), np.ones((2, 4, 4, 16), "float32")]
    >>> out = layer(features, np.array([0, 1, 1]), np.array([0, 70, 79]), np.array([0, 8, 3]))
    >>> tuple(out.shape)
    (3, 3, 3, 4)
    >>> tuple(layer.template_kernel.shape), tuple(layer.weights_kernel.shape)
    ((3, 3, 16, 36), (3, 3, 16, 36))
    """

    def __init__(self, template_size=3, template_channels=256, num_weight_sets=1, weight_type="depthwise",
                 output_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.template_size = require_positive_int("template_size", template_size)
        self.template_channels = require_positive_int("template_channels", template_channels)
        self.num_weight_sets = require_positive_int("num_weight_sets", num_weight_sets)
        self.weight_type = require_choice("weight_type", weight_type, WEIGHT_TYPES)
        if self.weight_type == "full":
            if output_channels is None:
                raise ValueError("`output_channels` is required with weight_type='full' (the C_out of the dynamic "
                                 "1x1 conv), got None.")
            self.output_channels = require_positive_int("output_channels", output_channels)
        else:
            if output_channels is not None and (
                    isinstance(output_channels, bool) or output_channels != self.template_channels):
                raise ValueError(
                    f"`output_channels` must be None (or equal `template_channels`={self.template_channels}) with "
                    f"weight_type='depthwise', got {output_channels!r}.")
            self.output_channels = None if output_channels is None else int(output_channels)

    @property
    def out_channels(self):
        """``C_out``: ``template_channels`` (depthwise) or ``output_channels`` (full)."""
        return self.template_channels if self.weight_type == "depthwise" else self.output_channels

    @property
    def weight_channels(self):
        """``C_w``, the generated values per weight set: ``C`` or ``C C_out + C_out``."""
        if self.weight_type == "depthwise":
            return self.template_channels
        return self.template_channels * self.output_channels + self.output_channels

    @staticmethod
    def _check_features_shape(features_shape):
        if not isinstance(features_shape, (list, tuple)) or not features_shape or not all(
                isinstance(s, (list, tuple)) for s in features_shape):
            raise ValueError(f"`features` must be a non-empty list of [B, H, W, C_in] maps (one per level), got "
                             f"{features_shape}.")
        shapes = [tuple(s) for s in features_shape]
        for shape in shapes:
            if len(shape) != 4 or None in shape[1:]:
                raise ValueError(f"every map of `features` must be [B, H, W, C_in] with known H, W, C_in, got "
                                 f"shapes {shapes}.")
        if len({s[3] for s in shapes}) != 1:
            raise ValueError(f"every level of `features` must have the same channels C_in, got shapes {shapes}.")
        if len({s[0] for s in shapes if s[0] is not None}) > 1:
            raise ValueError(f"every level of `features` must have the same batch size, got shapes {shapes}.")
        return shapes

    def build(self, features_shape, image_index_shape=None, location_index_shape=None, weight_set_index_shape=None):
        shapes = self._check_features_shape(features_shape)
        channels_in = int(shapes[0][3])
        k2c = self.template_size**2 * self.template_channels
        # one initializer each: an initializer's seed is fixed when it is made, so a shared one
        # would give equal-shape kernels (A C_w = k k C, e.g. RetinaNet's defaults) equal values
        self.template_kernel = self.add_weight(shape=(3, 3, channels_in, k2c),
                                               initializer=keras.initializers.RandomNormal(stddev=0.01),
                                               name="template_kernel")
        self.template_bias = self.add_weight(shape=(k2c,), initializer="zeros", name="template_bias")
        width = self.num_weight_sets * self.weight_channels
        self.weights_kernel = self.add_weight(shape=(3, 3, channels_in, width),
                                              initializer=keras.initializers.RandomNormal(stddev=0.01),
                                              name="weights_kernel")
        self.weights_bias = self.add_weight(shape=(width,), initializer="zeros", name="weights_bias")

    def neighbourhoods(self, features, image_index, location_index):
        """The 3x3 neighbourhoods of the points: ``[P, 9 C_in]`` (zeros outside the maps), in
        the row order ``((dy + 1) 3 + (dx + 1)) C_in + c`` of a reshaped ``Conv2D`` kernel."""
        shapes = self._check_features_shape([tuple(f.shape) for f in features])
        channels_in = shapes[0][3]
        heights = [s[1] for s in shapes]
        widths = [s[2] for s in shapes]
        counts = [h * w for h, w in zip(heights, widths)]
        padded_counts = [(h + 2) * (w + 2) for h, w in zip(heights, widths)]
        rows_per_image = sum(padded_counts)
        starts = np.cumsum([0] + counts)  # first location of each level
        padded_starts = np.cumsum([0] + padded_counts)

        # one table of rows: image, level, padded row, padded column
        table = ops.concatenate(
            [ops.reshape(ops.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0))), (-1, count, channels_in))
             for f, count in zip(features, padded_counts)], axis=1)
        table = ops.reshape(table, (-1, channels_in))

        batch = ops.shape(features[0])[0]
        image_index = ops.clip(ops.cast(image_index, "int32"), 0, ops.cast(batch, "int32") - 1)
        location_index = ops.clip(ops.cast(location_index, "int32"), 0, int(starts[-1]) - 1)
        level = ops.zeros_like(location_index)
        for start in starts[1:-1]:
            level = level + ops.cast(location_index >= int(start), "int32")

        def per_level(values):
            return ops.take(ops.convert_to_tensor(np.asarray(values, np.int32)), level)

        local = location_index - per_level(starts[:-1])
        width = per_level(widths)
        row, column = local // width, local % width
        padded_width = width + 2
        centre = (image_index * rows_per_image + per_level(padded_starts[:-1])
                  + (row + 1) * padded_width + (column + 1))
        offsets = [dy * padded_width + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        neighbours = ops.stack([centre + o for o in offsets], axis=1)  # [P, 9]
        gathered = ops.take(table, neighbours, axis=0)  # [P, 9, C_in]
        return ops.reshape(gathered, (-1, 9 * channels_in))

    def call(self, features, image_index, location_index, weight_set_index=None):
        features = list(features)
        patches = self.neighbourhoods(features, image_index, location_index)
        k, channels, sets = self.template_size, self.template_channels, self.num_weight_sets
        rows = patches.shape[-1]
        template = ops.matmul(patches, ops.reshape(self.template_kernel, (rows, -1))) + self.template_bias
        template = ops.reshape(template, (-1, k, k, channels))  # q = (u k + v) C + c
        weights = ops.matmul(patches, ops.reshape(self.weights_kernel, (rows, -1))) + self.weights_bias
        weights = ops.reshape(weights, (-1, sets, self.weight_channels))
        if sets == 1:
            weights = weights[:, 0]
        else:
            if weight_set_index is None:
                weight_set_index = ops.zeros_like(ops.cast(image_index, "int32"))
            index = ops.clip(ops.cast(weight_set_index, "int32"), 0, sets - 1)
            weights = ops.take_along_axis(weights, index[:, None, None], axis=1)[:, 0]
        if self.weight_type == "depthwise":
            return template * weights[:, None, None, :]
        c_out = self.output_channels
        matrix = ops.reshape(weights[:, : channels * c_out], (-1, channels, c_out))
        bias = weights[:, channels * c_out :]
        return ops.einsum("puvc,pco->puvo", template, matrix) + bias[:, None, None, :]

    def compute_output_shape(self, features_shape, image_index_shape=None, location_index_shape=None,
                             weight_set_index_shape=None):
        points = None if image_index_shape is None else image_index_shape[0]
        return (points, self.template_size, self.template_size, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(template_size=self.template_size, template_channels=self.template_channels,
                      num_weight_sets=self.num_weight_sets, weight_type=self.weight_type,
                      output_channels=self.output_channels)
        return config
