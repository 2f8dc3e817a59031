import numpy as np
import pytest
import tensorflow as tf

from keras_cvx.data import image_ops
from keras_cvx.data.augment import POLICIES, RANDAUGMENT_PAPER_OPS, autoaugment, rand_augment

# A structured RGB image: every op changes it (narrow, different channel ranges; not symmetric).
_Y, _X = np.mgrid[0:12, 0:14]
IMAGE = np.stack([60 + 5 * _X, 30 + 9 * _Y, 100 + (_X * _Y) % 40], -1).astype(np.uint8)
INVERTED = 255 - IMAGE


def _run(augment, image=IMAGE, seed=(0, 0)):
    return augment(tf.constant(image), seed=tf.constant(seed, tf.int64)).numpy()


def _map(augment, image=IMAGE, count=64):
    """``count`` copies of ``image`` through ``dataset.map(augment)`` (the generator's seeds)."""
    dataset = tf.data.Dataset.from_tensors(image).repeat(count).map(augment)
    return np.stack(list(dataset.as_numpy_iterator()))


def _rotated(degrees, image=IMAGE):
    return np.round(image_ops.rotate(tf.constant(image, tf.float32), degrees).numpy()).astype(np.uint8)


AUGMENTERS = {
    "autoaugment_imagenet": lambda seed=None: autoaugment("imagenet", seed=seed),
    "autoaugment_v0": lambda seed=None: autoaugment("v0", seed=seed),
    "rand_augment": lambda seed=None: rand_augment(num_ops=2, magnitude=9, seed=seed),
    "rand_augment_jitter": lambda seed=None: rand_augment(3, 15, magnitude_scale=30, magnitude_std=3, apply_probability=0.5, seed=seed),
}


@pytest.mark.parametrize("name", sorted(AUGMENTERS))
def test_dtype_shape_range_and_seed_determinism(name):
    augment = AUGMENTERS[name]()
    for image in (IMAGE, IMAGE[..., :1], IMAGE.astype(np.float32) + 0.25):
        outputs = [_run(augment, image, seed=(s, 1)) for s in range(6)]
        for out in outputs:
            assert out.shape == image.shape and out.dtype == image.dtype
            assert out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(outputs[0], _run(augment, image, seed=(0, 1)))  # same seed, same image
        assert len({out.tobytes() for out in outputs}) >= 3
    floats = np.stack([_run(augment, IMAGE.astype(np.float32) * 0.5 + 0.25, seed=(s, 2)) for s in range(6)])
    assert np.any(floats != np.round(floats))  # float images are not quantised
    clipped = _run(augment, np.full((5, 6, 3), 400.0, np.float32))
    assert clipped.max() <= 255


@pytest.mark.parametrize("name", sorted(AUGMENTERS))
def test_dataset_map_is_per_image_and_reproducible_with_the_factory_seed(name):
    first = _map(AUGMENTERS[name](seed=7))
    np.testing.assert_array_equal(first, _map(AUGMENTERS[name](seed=7)))
    assert np.any(first != _map(AUGMENTERS[name](seed=8)))
    # 64 identical images in one stream get their own op draws (one draw per batch would give
    # 1 distinct result). AutoAugment leaves ~1/4 of the images unchanged and several of its
    # ops give the same result on every image, so fewer distinct results than RandAugment.
    assert len({out.tobytes() for out in first}) >= 16


@pytest.mark.parametrize("name", sorted(AUGMENTERS))
def test_two_identical_images_in_a_batch_usually_differ(name):
    augment = AUGMENTERS[name]()
    # 20 batches of two identical images; element (b, j) gets the seed (b, j).
    seeds = tf.data.Dataset.range(40).map(lambda k: tf.stack([k // 2, k % 2]))
    dataset = seeds.map(lambda seed: augment(tf.constant(IMAGE), seed=seed)).batch(2)
    different = sum(int(np.any(a != b)) for a, b in dataset.as_numpy_iterator())
    assert different >= 15


def test_parallel_map_with_element_seeds_is_deterministic():
    augment = rand_augment(seed=1)

    def run():
        dataset = tf.data.Dataset.from_tensors(IMAGE).repeat(32).enumerate()
        dataset = dataset.map(lambda i, x: augment(x, seed=tf.stack([tf.constant(5, tf.int64), i])), num_parallel_calls=4)
        return np.stack(list(dataset.as_numpy_iterator()))

    np.testing.assert_array_equal(run(), run())


def test_autoaugment_draws_sub_policies_uniformly_and_ops_with_their_probability():
    policy = [[("Identity", 1.0, 0)], [("Invert", 1.0, 0)], [("Solarize", 1.0, 0)]]  # solarize 0: all inverted too
    outputs = _map(autoaugment(policy, seed=3), count=600)
    inverted = np.mean([np.array_equal(out, INVERTED) for out in outputs])
    assert abs(inverted - 2 / 3) < 0.06
    outputs = _map(autoaugment([[("Invert", 0.3, 4), ("Invert", 0.0, 4)]], seed=4), count=600)
    assert abs(np.mean([np.array_equal(out, INVERTED) for out in outputs]) - 0.3) < 0.06


def test_rand_augment_op_choice_and_apply_probability():
    outputs = _map(rand_augment(num_ops=1, ops=("Identity", "Invert"), seed=5), count=600)
    assert abs(np.mean([np.array_equal(out, INVERTED) for out in outputs]) - 0.5) < 0.06
    outputs = _map(rand_augment(num_ops=1, ops=("Invert",), apply_probability=0.25, seed=6), count=600)
    assert abs(np.mean([np.array_equal(out, INVERTED) for out in outputs]) - 0.25) < 0.06
    # Two Invert-or-Identity draws: inverted iff exactly one Invert (probability 1/2).
    outputs = _map(rand_augment(num_ops=2, ops=("Identity", "Invert"), seed=7), count=600)
    changed = [not np.array_equal(out, IMAGE) for out in outputs]
    assert abs(np.mean(changed) - 0.5) < 0.06


def _one_of(output, candidates):
    return any(np.array_equal(output, candidate) for candidate in candidates)


def test_rand_augment_level_mapping():
    image = tf.constant(IMAGE, tf.float32)
    for seed in range(4):
        out = _run(rand_augment(1, 10, ops=("Rotate",)), seed=(seed, 0))
        assert _one_of(out, [_rotated(30.0), _rotated(-30.0)])
        out = _run(rand_augment(1, 5, ops=("Color",)), seed=(seed, 0))
        assert _one_of(out, [np.round(image_ops.color(image, f).numpy()) for f in (0.55, 1.45)])
        out = _run(rand_augment(1, 10, ops=("TranslateX",), translate_fraction=0.5), seed=(seed, 0))
        assert _one_of(out, [np.round(image_ops.translate_x(image, p).numpy()) for p in (7.0, -7.0)])
    np.testing.assert_array_equal(_run(rand_augment(1, 10, ops=("Posterize",))), image_ops.posterize(image, 4))
    np.testing.assert_array_equal(_run(rand_augment(1, 5, ops=("Solarize",))), image_ops.solarize(image, 128))
    np.testing.assert_array_equal(_run(rand_augment(1, 10, ops=("Solarize",))), INVERTED)
    np.testing.assert_array_equal(_run(rand_augment(1, 5, ops=("SolarizeAdd",))), image_ops.solarize_add(image, 55))


def test_autoaugment_level_mapping():
    image = tf.constant(IMAGE, tf.float32)
    cases = [
        (("PosterizeOriginal", 1.0, 8), image_ops.posterize(image, 7)),  # 4 + int(4 * 0.8)
        (("Posterize", 1.0, 6), image_ops.posterize(image, 2)),  # int(4 * 0.6)
        (("Solarize", 1.0, 5), image_ops.solarize(image, 128)),  # int(256 * 0.5)
        (("Color", 1.0, 0), image_ops.color(image, 0.1)),  # 0.1 + 1.8 * 0
        (("Contrast", 1.0, 10), image_ops.contrast(image, 1.9)),
        (("SolarizeAdd", 1.0, 3), image_ops.solarize_add(image, 33)),
    ]
    for op, expected in cases:
        np.testing.assert_array_equal(_run(autoaugment([[op]])), np.round(expected.numpy()), err_msg=str(op))
    for seed in range(4):
        out = _run(autoaugment([[("Rotate", 1.0, 9)]]), seed=(seed, 3))
        assert _one_of(out, [_rotated(27.0), _rotated(-27.0)])


MAGNITUDE_OPS = [name for name in RANDAUGMENT_PAPER_OPS if name not in ("AutoContrast", "Equalize")] + ["SolarizeAdd"]


@pytest.mark.parametrize("op", MAGNITUDE_OPS)
def test_rand_augment_magnitude_zero_is_the_identity(op):
    augment = rand_augment(num_ops=2, magnitude=0, ops=(op,))
    for image in (IMAGE, IMAGE.astype(np.float32) + 0.3):
        for seed in range(3):
            np.testing.assert_allclose(_run(augment, image, seed=(seed, 9)), image, atol=1e-4)


def test_magnitude_std_jitters_the_level():
    outputs = _map(rand_augment(num_ops=1, magnitude=0, magnitude_std=2.0, ops=("Brightness",), seed=8), count=200)
    changed = np.mean([not np.array_equal(out, IMAGE) for out in outputs])
    assert 0.3 < changed < 0.7  # negative jitter is clipped to level 0 (the identity)


def test_imagenet_policy_is_the_spec_table():
    assert len(POLICIES["imagenet"]) == 25 and len(POLICIES["v0"]) == 25
    assert all(len(sub_policy) == 2 for sub_policy in POLICIES["imagenet"] + POLICIES["v0"])
    assert POLICIES["imagenet"][0] == (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9))
    assert POLICIES["imagenet"][10] == (("Rotate", 0.8, 8), ("Color", 0.4, 0))
    assert POLICIES["imagenet"][18] == (("ShearX", 0.6, 5), ("Equalize", 1.0, 9))
    assert POLICIES["v0"][0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
    assert POLICIES["v0"][-1] == (("Color", 0.8, 6), ("Rotate", 0.4, 5))


@pytest.mark.parametrize(
    "factory, kwargs, argument",
    [
        (rand_augment, {"num_ops": 0}, "num_ops"),
        (rand_augment, {"magnitude": -1}, "magnitude"),
        (rand_augment, {"magnitude": 11}, "magnitude"),
        (rand_augment, {"magnitude_scale": 0}, "magnitude_scale"),
        (rand_augment, {"magnitude_std": -0.5}, "magnitude_std"),
        (rand_augment, {"apply_probability": 1.5}, "apply_probability"),
        (rand_augment, {"ops": ("Rotate", "Cutout")}, "ops"),
        (rand_augment, {"ops": "Rotate"}, "ops"),
        (rand_augment, {"ops": ()}, "ops"),
        (rand_augment, {"fill_value": 300}, "fill_value"),
        (rand_augment, {"interpolation": "bicubic"}, "interpolation"),
        (rand_augment, {"translate_fraction": 0}, "translate_fraction"),
        (autoaugment, {"policy": "cifar10"}, "policy"),
        (autoaugment, {"policy": [[("Cutout", 0.5, 3)]]}, "policy"),
        (autoaugment, {"policy": [[("Rotate", 1.5, 3)]]}, "policy"),
        (autoaugment, {"policy": [[("Rotate", 0.5, 11)]]}, "policy"),
        (autoaugment, {"policy": [[("Rotate", 0.5)]]}, "policy"),
        (autoaugment, {"policy": []}, "policy"),
        (autoaugment, {"fill_value": -1}, "fill_value"),
    ],
)
def test_bad_arguments_raise(factory, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        factory(**kwargs)


def test_bad_images_raise():
    augment = rand_augment()
    with pytest.raises(ValueError, match="image"):
        augment(tf.zeros((2, 8, 8, 3), tf.uint8))
    with pytest.raises(ValueError, match="image"):
        augment(tf.zeros((8, 8, 2), tf.uint8))
