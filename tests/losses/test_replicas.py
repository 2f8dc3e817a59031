"""Tests for keras_cvx.losses.replicas: outside a strategy (and under JAX) a replica's share is
the loss itself; a normalised sum divides by the global count the Trainer passes, else by
the replica's own count. The 2-replica behaviour is tested end to end against a
hand-written single-process step in tests/training/test_trainer.py."""

import numpy as np
import pytest
from keras import ops

from keras_cvx.losses.replicas import LOSS_NORMALIZERS, normalized_sum, num_replicas, replica_share


def test_outside_a_strategy_one_replica_and_the_loss_unchanged():
    assert num_replicas() == 1
    assert float(replica_share(ops.convert_to_tensor(2.5))) == 2.5


def test_normalized_sum_uses_the_global_count_when_given():
    total = ops.convert_to_tensor([3.0, 6.0])
    # replica's own count 3 -> [1, 2]; the Trainer's global count 12 -> [0.25, 0.5]
    np.testing.assert_allclose(ops.convert_to_numpy(normalized_sum(total, 3.0)), [1.0, 2.0])
    y = {"boxes": None, LOSS_NORMALIZERS: {"num_positives": ops.convert_to_tensor(12.0)}}
    np.testing.assert_allclose(ops.convert_to_numpy(normalized_sum(total, 3.0, y)), [0.25, 0.5])
    # zero positives: divided by 1, finite
    assert float(normalized_sum(ops.convert_to_tensor(0.0), 0.0)) == 0.0
    zero = {LOSS_NORMALIZERS: {"num_positives": ops.convert_to_tensor(0.0)}}
    assert float(normalized_sum(ops.convert_to_tensor(4.0), 0.0, zero)) == 4.0


def test_normalized_sum_other_key_falls_back_to_the_replica_count():
    y = {LOSS_NORMALIZERS: {"num_positives": ops.convert_to_tensor(100.0)}}
    assert float(normalized_sum(ops.convert_to_tensor(8.0), 2.0, y, key="centerness_sum")) == 4.0


@pytest.mark.tensorflow_only
def test_under_a_one_device_strategy_the_share_is_the_loss():
    import tensorflow as tf

    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert num_replicas() == 1
        assert float(replica_share(ops.convert_to_tensor(2.0))) == 2.0

