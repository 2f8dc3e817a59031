"""Input pipelines (TensorFlow ``tf.data``): COCO json and TFRecords, bundled data, sampling."""

from keras_cvx.data.augment import autoaugment, rand_augment
from keras_cvx.data.class_frequencies import class_frequencies
from keras_cvx.data.coco import DataWarning, check_annotations, class_id_map, coco_dataset, load_coco
from keras_cvx.data.digits import mnist_5k
from keras_cvx.data.real_images import coins_dataset, photos_dataset
from keras_cvx.data.sampling import (
    apply_repeat_factors,
    class_sampling_probabilities,
    repeat_factors,
    resample_by_class,
)
from keras_cvx.data.shapes import LONG_TAILED_PROFILE, synthetic_shapes
from keras_cvx.data.ssd_augment import SSDAugmentation, ssd_coco_dataset, write_augmentation_grid
from keras_cvx.data.tfrecord import tfrecord_dataset, write_coco_tfrecord
from keras_cvx.data.transforms import clip_boxes, horizontal_flip, resize_and_pad, scale_boxes
