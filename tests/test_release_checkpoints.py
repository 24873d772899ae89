"""Release checkpoints: a damaged newest step is skipped with a warning; an asked-for one is an error."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from octo_like.policy import release
from octo_like.utils.errors import InputError


def test_damaged_newest_step_falls_back_to_the_previous_good_one(tmp_path):
    manager = release.checkpoint_manager(str(tmp_path))
    for step, value in ((1, 1.0), (2, 2.0)):
        release.save(manager, step, {"w": jnp.full((4, 3), value)})
    manager.wait_until_finished()
    # Damage every file of step 2 (as a half-copied or corrupted disk would).
    for root, _, files in os.walk(tmp_path / "2"):
        for name in files:
            with open(os.path.join(root, name), "wb") as file:
                file.write(b"\\0garbage")
    params, step = release.restore_params(str(tmp_path), {"w": np.zeros((4, 3), np.float32)})
    assert step == 1
    np.testing.assert_array_equal(params["w"], np.ones((4, 3)))
    with pytest.raises(InputError, match="checkpoint step 2 of .* cannot be restored"):
        release.restore_params(str(tmp_path), {"w": np.zeros((4, 3), np.float32)}, step=2)
    with pytest.raises(InputError, match=r"has no checkpoint step 7; it has steps \[1, 2\]"):
        release.restore_params(str(tmp_path), {"w": np.zeros((4, 3), np.float32)}, step=7)


def test_a_checkpoint_of_another_structure_fails_in_one_line_naming_the_cause(tmp_path):
    manager = release.checkpoint_manager(str(tmp_path))
    release.save(manager, 1, {"w": jnp.ones((4, 3))})
    manager.wait_until_finished()
    with pytest.raises(InputError) as excinfo:
        release.restore_params(str(tmp_path), {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})
    message = str(excinfo.value)
    assert message.startswith(f"no checkpoint step of '{tmp_path}' can be restored (tried [1]); the last error: ")
    assert (
        "\n" not in message
        and len(message) > len(f"no checkpoint step of '{tmp_path}' can be restored (tried [1]); the last error: ") + 10
    )
