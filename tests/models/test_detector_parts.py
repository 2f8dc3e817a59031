import keras
import pytest

from keras_cvx.layers.proposal_generator import ProposalGenerator
from keras_cvx.models.detector_parts import deserialize_part, detector_backbone, detector_image_size


def test_image_size_is_a_pair_of_multiples_of_32():
    assert detector_image_size(64) == (64, 64) and detector_image_size([96, 128]) == (96, 128)
    for bad in (48, 0, True, (64,), (64, 100), "64", (64.0, 64)):
        with pytest.raises(ValueError, match="image_size"):
            detector_image_size(bad)


def test_parts_from_none_a_config_or_an_object():
    part = ProposalGenerator(10, 5)
    assert deserialize_part(None, lambda: part) is part
    assert deserialize_part(part, None) is part
    revived = deserialize_part(keras.saving.serialize_keras_object(part), None)
    assert isinstance(revived, ProposalGenerator) and revived.get_config() == part.get_config()


@pytest.mark.single_backend  # builds a ResNet-10; nothing backend-specific
def test_named_backbone_shapes_and_checks():
    model, shapes = detector_backbone("resnet10", (64, 96), 0.125, ("C2", "C5"))
    assert shapes == {"C2": (None, 16, 24, 8), "C5": (None, 2, 3, 64)}
    assert detector_backbone(keras.saving.serialize_keras_object(model), (64, 96), 1.0, ("C5",))[1]["C5"] == (
        None, 2, 3, 64)
    with pytest.raises(ValueError, match="backbone"):
        detector_backbone("vgg16", (64, 64), 1.0, ("C5",))
    plain = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="C2"):
        detector_backbone(plain, (64, 64), 1.0, ("C2",))
