import numpy as np
import pytest
import tensorflow as tf

from octo_like.data import frame_transforms
from octo_like.data.dlataset import DLataset
from octo_like.utils.errors import InputError

WINDOW, SIZE = 3, 16

AUGMENT_KWARGS = dict(
    random_resized_crop=dict(scale=(0.6, 0.8), ratio=(0.9, 1.1)),
    random_brightness=(0.1,),
    random_contrast=(0.8, 1.2),
    random_saturation=(0.8, 1.2),
    random_hue=(0.05,),
    augment_order=("random_resized_crop", "random_brightness", "random_contrast", "random_saturation", "random_hue"),
)


def structured_image(height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """A colour gradient with a bright square: any crop, shift or colour change is visible."""
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (height + width - 2)], -1)
    image[height // 4 : height // 2, width // 4 : width // 2] = [250, 30, 200]
    return image.astype(np.uint8)


def encode(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def make_frame(
    cameras: dict[str, list[bytes]], goals: dict[str, bytes] | None = None, depth: list[bytes] | None = None
) -> dict:
    goals = goals or {}
    observation = {f"image_{camera}": tf.constant(images) for camera, images in cameras.items()}
    pad_mask = {f"image_{cam}": tf.constant([image != b"" for image in images]) for cam, images in cameras.items()}
    if depth is not None:
        observation["depth_primary"] = tf.constant(depth)
        pad_mask["depth_primary"] = tf.constant([d != b"" for d in depth])
    observation |= {
        "proprio": tf.zeros([WINDOW, 2], tf.float32),
        "timestep": tf.range(WINDOW, dtype=tf.int32),
        "timestep_pad_mask": tf.ones([WINDOW], tf.bool),
        "pad_mask_dict": pad_mask | {"proprio": tf.ones([WINDOW], tf.bool)},
    }
    task = {f"image_{camera}": tf.constant(goal) for camera, goal in goals.items()}
    task |= {
        "language_instruction": tf.constant(b"pick"),
        "pad_mask_dict": {f"image_{camera}": tf.constant(goal != b"") for camera, goal in goals.items()}
        | {"language_instruction": tf.constant(True)},
    }
    return {
        "observation": observation,
        "task": task,
        "action": tf.zeros([WINDOW, 2, 3], tf.float32),
        "action_pad_mask": tf.ones([WINDOW, 2, 3], tf.bool),
        "dataset_name": tf.constant(b"toy"),
    }


def test_decode_keeps_exact_pixels_at_native_size():
    image = structured_image()
    frame = make_frame({"primary": [encode(image)] * WINDOW}, goals={"primary": encode(image)})
    out = frame_transforms.decode_and_resize(frame, {"primary": (SIZE, SIZE)})
    obs = out["observation"]["image_primary"]
    assert obs.dtype == tf.uint8 and obs.shape == (WINDOW, SIZE, SIZE, 3)
    for t in range(WINDOW):
        np.testing.assert_array_equal(obs.numpy()[t], image)
    np.testing.assert_array_equal(out["task"]["image_primary"].numpy(), image)
    # Untouched keys pass through.
    assert out["task"]["language_instruction"].numpy() == b"pick"
    np.testing.assert_array_equal(out["observation"]["timestep"].numpy(), [0, 1, 2])


def test_resize_constant_image_and_missing_camera_is_zeros():
    constant = np.full([SIZE, SIZE, 3], [200, 100, 50], np.uint8)
    frame = make_frame(
        {"primary": [encode(constant)] * WINDOW, "wrist": [b""] * WINDOW}, goals={"primary": b"", "wrist": b""}
    )
    out = frame_transforms.decode_and_resize(frame, {"primary": (8, 12), "wrist": (6, 4)})
    primary = out["observation"]["image_primary"]
    assert primary.dtype == tf.uint8 and primary.shape == (WINDOW, 8, 12, 3)
    assert np.abs(primary.numpy().astype(int) - [200, 100, 50]).max() <= 1
    wrist = out["observation"]["image_wrist"]
    assert wrist.dtype == tf.uint8 and wrist.shape == (WINDOW, 6, 4, 3)
    assert not wrist.numpy().any()
    assert out["task"]["image_primary"].shape == (8, 12, 3) and not out["task"]["image_primary"].numpy().any()
    assert out["task"]["image_wrist"].shape == (6, 4, 3)


def test_resize_of_already_decoded_images():
    image = structured_image()
    frame = make_frame({"primary": [b""] * WINDOW})
    frame["observation"]["image_primary"] = tf.constant(np.stack([image] * WINDOW))
    same = frame_transforms.decode_and_resize(frame, {"primary": (SIZE, SIZE)})
    np.testing.assert_array_equal(same["observation"]["image_primary"].numpy()[1], image)
    smaller = frame_transforms.decode_and_resize(frame, {"primary": (8, 8)})
    assert smaller["observation"]["image_primary"].shape == (WINDOW, 8, 8, 3)


def test_depth_decodes_16_bit_png_with_nearest_resize():
    depth = np.zeros([4, 4, 1], np.uint16)
    depth[:, 2:] = 3000  # a depth edge: nearest neighbour keeps only the two true depths
    frame = make_frame({"primary": [b""] * WINDOW}, depth=[tf.io.encode_png(depth).numpy(), b"", b""])
    out = frame_transforms.decode_and_resize(frame, {"primary": (4, 4)}, depth_resize_size={"primary": (8, 8)})
    decoded = out["observation"]["depth_primary"]
    assert decoded.dtype == tf.float32 and decoded.shape == (WINDOW, 8, 8)
    assert set(np.unique(decoded.numpy()[0])) == {0.0, 3000.0}
    np.testing.assert_array_equal(decoded.numpy()[0, :, 4:], 3000.0)
    assert not decoded.numpy()[1:].any()


def test_missing_size_names_the_camera():
    frame = make_frame({"primary": [b""] * WINDOW, "wrist": [b""] * WINDOW})
    with pytest.raises(InputError, match=r"'wrist'.*\['primary'\]"):
        frame_transforms.decode_and_resize(frame, {"primary": (8, 8)})
    dataset = DLataset(tf.data.Dataset.from_tensors(frame), is_flattened=True)
    with pytest.raises(InputError, match="'wrist'"):
        frame_transforms.apply_frame_transforms(dataset, train=False, resize_size={"primary": (8, 8)})


def decoded_frame(image: np.ndarray) -> dict:
    """Two cameras and their goals, all the same image, decoded."""
    frame = make_frame(
        {"primary": [encode(image)] * WINDOW, "wrist": [encode(image)] * WINDOW},
        goals={"primary": encode(image), "wrist": encode(image)},
    )
    return frame_transforms.decode_and_resize(frame, {"primary": (SIZE, SIZE), "wrist": (SIZE, SIZE)})


def test_augment_applies_one_draw_per_camera_to_window_and_goal():
    image = structured_image()
    frame = decoded_frame(image)
    kwargs = {"primary": AUGMENT_KWARGS, "wrist": AUGMENT_KWARGS}
    seed = tf.constant([3, 7], tf.int64)
    out = frame_transforms.augment(frame, seed, kwargs)
    primary = out["observation"]["image_primary"].numpy()
    assert primary.dtype == np.uint8 and primary.shape == (WINDOW, SIZE, SIZE, 3)
    # The same draw for every timestep of the window and for the goal image of that camera.
    for t in range(1, WINDOW):
        np.testing.assert_array_equal(primary[t], primary[0])
    np.testing.assert_array_equal(out["task"]["image_primary"].numpy(), primary[0])
    assert np.abs(primary[0].astype(int) - image).mean() > 5
    # Another camera with the same input: its own draw, shared with its own goal.
    wrist = out["observation"]["image_wrist"].numpy()
    assert np.abs(wrist[0].astype(int) - primary[0]).mean() > 2
    np.testing.assert_array_equal(out["task"]["image_wrist"].numpy(), wrist[0])
    # Deterministic in the seed.
    again = frame_transforms.augment(frame, seed, kwargs)
    np.testing.assert_array_equal(again["observation"]["image_primary"].numpy(), primary)
    other = frame_transforms.augment(frame, tf.constant([3, 8], tf.int64), kwargs)
    assert np.abs(other["observation"]["image_primary"].numpy().astype(int) - primary).mean() > 2
    # Only cameras named in the kwargs are augmented.
    only_primary = frame_transforms.augment(frame, seed, {"primary": AUGMENT_KWARGS})
    np.testing.assert_array_equal(only_primary["observation"]["image_wrist"].numpy()[0], image)


def test_augment_leaves_missing_images_untouched():
    image = structured_image()
    frame = make_frame({"primary": [b"", encode(image), encode(image)]}, goals={"primary": b""})
    frame = frame_transforms.decode_and_resize(frame, {"primary": (SIZE, SIZE)})
    out = frame_transforms.augment(frame, tf.constant([1, 2], tf.int64), {"primary": AUGMENT_KWARGS})
    primary = out["observation"]["image_primary"].numpy()
    assert not primary[0].any() and not out["task"]["image_primary"].numpy().any()
    assert primary[1].any() and np.abs(primary[1].astype(int) - image).mean() > 5


def test_augment_order_is_followed_and_validated():
    frame = decoded_frame(structured_image())
    seed = tf.constant([0, 1], tf.int64)
    brightness_only = dict(AUGMENT_KWARGS, augment_order=["random_brightness"])
    out = frame_transforms.augment(frame, seed, {"primary": brightness_only})["observation"]["image_primary"].numpy()
    delta = out.astype(int) - frame["observation"]["image_primary"].numpy()
    # A uniform shift (up to rounding and clipping at 0/255) and nothing else.
    unclipped = (out > 0) & (out < 255)
    assert np.ptp(delta[unclipped]) <= 1 and np.abs(delta[unclipped]).max() > 0
    with pytest.raises(InputError, match=r"'random_blur'.*random_resized_crop"):
        frame_transforms.augment(frame, seed, {"primary": dict(augment_order=["random_blur"])})
    with pytest.raises(InputError, match=r"'random_contrast'.*no arguments"):
        frame_transforms.augment(frame, seed, {"primary": dict(augment_order=["random_contrast"])})
    with pytest.raises(InputError, match="'front'"):
        frame_transforms.augment(frame, seed, {"front": AUGMENT_KWARGS})


def tiny_dataset() -> DLataset:
    image = structured_image()
    frames = [
        make_frame({"primary": [encode(np.roll(image, shift, axis=1))] * WINDOW}, goals={"primary": encode(image)})
        for shift in range(3)
    ]
    dataset = tf.data.Dataset.from_tensors(frames[0])
    for frame in frames[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(frame))
    return DLataset(dataset, is_flattened=True)


def run(train: bool, seed: int = 0) -> list[np.ndarray]:
    dataset = frame_transforms.apply_frame_transforms(
        tiny_dataset(),
        train=train,
        resize_size={"primary": (SIZE, SIZE)},
        image_augment_kwargs={"primary": AUGMENT_KWARGS},
        num_parallel_calls=4,
        seed=seed,
    )
    return [frame["observation"]["image_primary"] for frame in dataset.batch(3)]


def test_apply_frame_transforms_is_deterministic_and_augments_only_in_training():
    first, second = run(train=True), run(train=True)
    assert len(first) == 1 and first[0].shape == (3, WINDOW, SIZE, SIZE, 3) and first[0].dtype == np.uint8
    np.testing.assert_array_equal(first[0], second[0])
    assert np.abs(run(train=True, seed=1)[0].astype(int) - first[0]).mean() > 2

    plain = run(train=False)[0]
    image = structured_image()
    for shift in range(3):
        for t in range(WINDOW):
            np.testing.assert_array_equal(plain[shift, t], np.roll(image, shift, axis=1))
    # Different frames get different draws (per-element seeds).
    assert np.abs(first[0][0, 0].astype(int) - np.roll(first[0][1, 0], -1, axis=1)).mean() > 2
