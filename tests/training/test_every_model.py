"""Every model the package ships trains one step with the ``Trainer`` under
``MirroredStrategy`` on 2 logical CPUs with XLA (``tests/training/every_model_steps.py``, in
a fresh process)."""

import numpy as np

from tests.fresh_process import run_module_for_json
from tests.training import every_model_steps


def test_one_mirrored_xla_trainer_step_of_every_model(tmp_path):
    results = run_module_for_json("tests.training.every_model_steps", tmp_path / "steps.json", timeout=900)
    assert sorted(results) == sorted(every_model_steps.MODELS)
    for name, result in results.items():
        assert result["replicas"] == 2, name
        assert np.isfinite(result["loss"]) and result["loss"] > 0, name
        assert result["finite"], name
        # every weight moves, but SSD-NET's box predictors of pyramid levels where this batch has
        # no positive anchor (the box loss counts positives only; here levels 0 and 2)
        allowed = "ssd_net/head/box_conv_" if name == "ssd_net" else None
        assert all(allowed and path.startswith(allowed) for path in result["unmoved"]), (name, result["unmoved"])
