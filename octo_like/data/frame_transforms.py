"""Frame-level transforms: image/depth decoding and resizing, and image augmentation.

They act on frames (see `dlataset.py`): observation values carry a leading window axis W, task
values none. Images arrive as encoded bytes (b"" where a camera is missing in a dataset) and leave
as uint8 [..., h, w, 3]; depth maps leave as float32 [..., h, w] in the units they were stored in
(e.g. millimetres for a 16-bit PNG). Everything is graph code for `tf.data` maps; the random ops are
stateless and driven by an explicit seed, so a DLataset map given a seed is reproducible.

`apply_frame_transforms` chains them in the order the training pipeline uses.
"""

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from octo_like.data.dlataset import AUTOTUNE, DLataset
from octo_like.utils.errors import InputError

IMAGE_PREFIX = "image_"
DEPTH_PREFIX = "depth_"
# Antialiased lanczos3 keeps downscaled images sharp without aliasing; its overshoot is clipped.
IMAGE_RESIZE_METHOD = "lanczos3"


# ----------------------------------------------------------------------------- decode and resize


def _cameras(frame: Mapping, prefix: str) -> list[tuple[str, str, str]]:
    """(part, key, camera) for every `<prefix><camera>` key of the observation and the task."""
    found = []
    for part in ("observation", "task"):
        for key in frame.get(part, {}):
            if key.startswith(prefix):
                found.append((part, key, key[len(prefix) :]))
    return found


def _check_sizes(cameras: Sequence[str], sizes: Mapping[str, Sequence[int]], what: str, arg: str) -> None:
    for camera in cameras:
        if camera not in sizes:
            raise InputError(
                f"{what} camera '{camera}' has no size in {arg}; {arg} has keys {sorted(sizes)}"
            )
        size = tuple(sizes[camera])
        if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
            raise InputError(f"{arg}['{camera}']={size!r} must be a (height, width) pair of positive ints")


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Float pixel values on the 0..255 scale -> uint8 (rounded, clipped)."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_images(images_NHWC: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """uint8 [N, h0, w0, 3] -> uint8 [N, h, w, 3]; unchanged (exact pixels) when already that size.

    Evaluation reproduces it without TensorFlow (`octo_like.eval.policies.resize_like_training`).
    """
    images_NHWC = tf.convert_to_tensor(images_NHWC)
    size = tuple(size)
    static_hw = tuple(images_NHWC.shape[1:3])
    if static_hw == size:
        return images_NHWC

    def resize():
        resized = tf.image.resize(tf.cast(images_NHWC, tf.float32), size, method=IMAGE_RESIZE_METHOD, antialias=True)
        return _to_uint8(resized)

    if None not in static_hw:
        out = resize()
    else:
        same = tf.reduce_all(tf.equal(tf.shape(images_NHWC)[1:3], size))
        out = tf.cond(same, lambda: images_NHWC, resize)
    out.set_shape([images_NHWC.shape[0], *size, 3])
    return out


def _resize_depths(depths_NHW: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """float32 [N, h0, w0] -> float32 [N, h, w] by nearest neighbour (no invented in-between depths)."""
    if tuple(depths_NHW.shape[1:3]) == size:
        return depths_NHW
    out = tf.image.resize(depths_NHW[..., None], size, method="nearest")[..., 0]
    out.set_shape([depths_NHW.shape[0], *size])
    return out


def _decode_image(encoded: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """One encoded image (PNG/JPEG/...; b"" = missing) -> uint8 [h, w, 3]."""

    def decode():
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        return resize_images(image[None], size)[0]

    out = tf.cond(tf.strings.length(encoded) > 0, decode, lambda: tf.zeros([*size, 3], tf.uint8))
    out.set_shape([*size, 3])
    return out


def _decode_depth(encoded: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """One encoded 16-bit PNG depth map (b"" = missing) -> float32 [h, w] in the stored units."""

    def decode():
        depth = tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)[..., 0], tf.float32)
        return _resize_depths(depth[None], size)[0]

    out = tf.cond(tf.strings.length(encoded) > 0, decode, lambda: tf.zeros(size, tf.float32))
    out.set_shape(size)
    return out


def _map_leading(
    fn: Callable[[tf.Tensor], tf.Tensor],
    value: tf.Tensor,
    item_rank: int,
    batched: bool,
    out_spec: tf.TensorSpec,
) -> tf.Tensor:
    """Applies `fn` over all leading axes of `value` (those before its last `item_rank` axes).

    With `batched`, `fn` takes the flattened leading axes as one batch axis; otherwise it is mapped
    over them one item at a time. The static leading shape is kept so that batching works.
    """
    lead_rank = value.shape.rank - item_rank
    lead_static = value.shape[:lead_rank]
    lead_dynamic = tf.shape(value)[:lead_rank]
    flat = tf.reshape(value, tf.concat([[-1], tf.shape(value)[lead_rank:]], axis=0))
    flat.set_shape([None, *value.shape[lead_rank:]])
    if batched:
        out = fn(flat)
    else:
        out = tf.map_fn(fn, flat, fn_output_signature=out_spec)
    out = tf.reshape(out, tf.concat([lead_dynamic, out_spec.shape], axis=0))
    out.set_shape([*lead_static, *out_spec.shape])
    return out


def _decode_resize_image(value: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    spec = tf.TensorSpec([*size, 3], tf.uint8)
    if value.dtype == tf.string:
        return _map_leading(lambda encoded: _decode_image(encoded, size), value, 0, False, spec)
    if value.dtype != tf.uint8 or value.shape.rank is None or value.shape.rank < 3 or value.shape[-1] != 3:
        raise InputError(f"image must be encoded bytes or uint8 [..., h, w, 3], got {value.dtype.name} {value.shape}")
    if value.shape.rank == 3:
        return resize_images(value[None], size)[0]
    return _map_leading(lambda images: resize_images(images, size), value, 3, True, spec)


def _decode_resize_depth(value: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    spec = tf.TensorSpec(size, tf.float32)
    if value.dtype == tf.string:
        return _map_leading(lambda encoded: _decode_depth(encoded, size), value, 0, False, spec)
    if value.shape.rank is None or value.shape.rank < 2:
        raise InputError(f"depth must be encoded bytes or float [..., h, w], got {value.dtype.name} {value.shape}")
    value = tf.cast(value, tf.float32)
    if value.shape.rank == 2:
        return _resize_depths(value[None], size)[0]
    return _map_leading(lambda depths: _resize_depths(depths, size), value, 2, True, spec)


def decode_and_resize(
    frame: dict,
    resize_size: Mapping[str, tuple[int, int]],
    depth_resize_size: Mapping[str, tuple[int, int]] | None = None,
) -> dict:
    """Decodes and resizes every `image_<camera>` / `depth_<camera>` of the observation and task.

    resize_size: camera -> (height, width) for `image_<camera>`; every camera in the frame needs one.
      Images become uint8 [..., h, w, 3]; missing ones (b"") zeros. Images already of that size keep
      their exact pixels; others are resized with antialiasing (IMAGE_RESIZE_METHOD).
    depth_resize_size: camera -> (height, width) for `depth_<camera>`; None uses `resize_size`.
      Depth becomes float32 [..., h, w] (nearest-neighbour resize); missing ones zeros.
    """
    depth_sizes = resize_size if depth_resize_size is None else depth_resize_size
    depth_arg = "resize_size" if depth_resize_size is None else "depth_resize_size"
    images = _cameras(frame, IMAGE_PREFIX)
    depths = _cameras(frame, DEPTH_PREFIX)
    _check_sizes([camera for _, _, camera in images], resize_size, "image", "resize_size")
    _check_sizes([camera for _, _, camera in depths], depth_sizes, "depth", depth_arg)

    frame = {**frame, "observation": dict(frame["observation"])}
    if "task" in frame:
        frame["task"] = dict(frame["task"])
    for part, key, camera in images:
        frame[part][key] = _decode_resize_image(frame[part][key], tuple(int(s) for s in resize_size[camera]))
    for part, key, camera in depths:
        frame[part][key] = _decode_resize_depth(frame[part][key], tuple(int(s) for s in depth_sizes[camera]))
    return frame


# ----------------------------------------------------------------------------- augmentation
#
# Each op is split in two: `sample` draws its parameters from a seed alone (never from the images),
# and `apply` applies those parameters to a batch of float32 [N, h, w, 3] images in [0, 1]. So one
# draw can be applied to every timestep of a window and to the goal image of the same camera.


def _uniform(seed: tf.Tensor, low: float, high: float, shape: Sequence[int] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, dtype=tf.float32)


def _sample_resized_crop(seed: tf.Tensor, scale: Sequence[float], ratio: Sequence[float]) -> tf.Tensor:
    """One crop box [y1, x1, y2, x2] in normalized coordinates.

    Like torchvision's RandomResizedCrop: area fraction ~ U(scale), aspect ratio log-uniform in
    `ratio`. The ratio is relative to the image's own aspect ratio (box width / height in normalized
    coordinates), so ratio 1 means no distortion once the crop is resized back to the image size.
    Box sides are clipped to the image instead of torchvision's rejection sampling.
    """
    area = _uniform(tf.random.experimental.stateless_fold_in(seed, 0), scale[0], scale[1])
    log_ratio = _uniform(tf.random.experimental.stateless_fold_in(seed, 1), math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    offset = _uniform(tf.random.experimental.stateless_fold_in(seed, 2), 0.0, 1.0, [2])
    y1 = offset[0] * (1.0 - height)
    x1 = offset[1] * (1.0 - width)
    return tf.stack([y1, x1, y1 + height, x1 + width])


def _apply_resized_crop(images: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    count = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    boxes = tf.tile(box[None], [count, 1])
    return tf.image.crop_and_resize(images, boxes, tf.range(count), size, method="bilinear")


def _args(name: str, value: Any, names: Sequence[str]) -> dict:
    """Op arguments given as a mapping or a sequence (Octo style) -> a dict of named arguments."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        args = dict(value.items())
    else:
        values = [value] if isinstance(value, (int, float)) else list(value)
        if len(values) != len(names):
            raise InputError(f"augment op '{name}' takes arguments {tuple(names)}, got {value!r}")
        args = dict(zip(names, values))
    if sorted(args) != sorted(names):
        raise InputError(f"augment op '{name}' takes arguments {tuple(names)}, got {value!r}")
    return args


def _check_range(name: str, key: str, pair: Any, lowest: float, highest: float = math.inf) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise InputError(f"augment op '{name}' argument {key}={pair!r} must be a (low, high) pair") from None
    if not lowest <= low <= high <= highest:
        raise InputError(
            f"augment op '{name}' argument {key}=({low}, {high}) must satisfy {lowest} <= low <= high <= {highest}"
        )
    return low, high


def _make_resized_crop(value: Any) -> tuple[Callable, Callable]:
    args = _args("random_resized_crop", value, ("scale", "ratio"))
    scale = _check_range("random_resized_crop", "scale", args["scale"], 0.0, 1.0)
    ratio = _check_range("random_resized_crop", "ratio", args["ratio"], 1e-6)
    if scale[1] <= 0.0:
        raise InputError(f"augment op 'random_resized_crop' argument scale={scale} must allow a positive area")
    return (lambda seed: _sample_resized_crop(seed, scale, ratio)), _apply_resized_crop


def _make_delta(name: str, apply: Callable) -> Callable[[Any], tuple[Callable, Callable]]:
    def make(value: Any) -> tuple[Callable, Callable]:
        (max_delta,) = _args(name, value, ("max_delta",)).values()
        max_delta = float(max_delta)
        if max_delta < 0:
            raise InputError(f"augment op '{name}' argument max_delta={max_delta} must be >= 0")
        return (lambda seed: _uniform(seed, -max_delta, max_delta)), apply

    return make


def _make_factor(name: str, apply: Callable) -> Callable[[Any], tuple[Callable, Callable]]:
    def make(value: Any) -> tuple[Callable, Callable]:
        args = _args(name, value, ("lower", "upper"))
        lower, upper = _check_range(name, "(lower, upper)", (args["lower"], args["upper"]), 0.0)
        return (lambda seed: _uniform(seed, lower, upper)), apply

    return make


# op name -> make(arguments) -> (sample(seed) -> params, apply(images, params) -> images)
AUGMENT_OPS: dict[str, Callable[[Any], tuple[Callable, Callable]]] = {
    "random_resized_crop": _make_resized_crop,
    "random_brightness": _make_delta("random_brightness", lambda images, delta: images + delta),
    "random_contrast": _make_factor("random_contrast", tf.image.adjust_contrast),
    "random_saturation": _make_factor("random_saturation", tf.image.adjust_saturation),
    "random_hue": _make_delta("random_hue", tf.image.adjust_hue),
}


def _build_augmentation(camera: str, kwargs: Mapping[str, Any]) -> list[tuple[Callable, Callable]]:
    """Validates one camera's kwargs -> the ordered list of (sample, apply) ops."""
    if not (isinstance(kwargs, Mapping) or hasattr(kwargs, "items")):
        raise InputError(f"image_augment_kwargs['{camera}'] must be a mapping of augment ops, got {kwargs!r}")
    kwargs = dict(kwargs.items())
    valid = ", ".join(AUGMENT_OPS)
    for key in kwargs:
        if key != "augment_order" and key not in AUGMENT_OPS:
            raise InputError(
                f"unknown augment op '{key}' in image_augment_kwargs['{camera}']; "
                f"valid ops: {valid} (and augment_order)"
            )
    order = kwargs.get("augment_order", [key for key in kwargs if key != "augment_order"])
    if isinstance(order, str):
        order = [order]
    ops = []
    for name in order:
        if name not in AUGMENT_OPS:
            raise InputError(
                f"unknown augment op '{name}' in image_augment_kwargs['{camera}'].augment_order; valid ops: {valid}"
            )
        if name not in kwargs:
            raise InputError(
                f"augment op '{name}' is in image_augment_kwargs['{camera}'].augment_order but has no arguments"
            )
        ops.append(AUGMENT_OPS[name](kwargs[name]))
    return ops


def _camera_seed(seed: tf.Tensor, camera: str) -> tf.Tensor:
    """A per-camera seed: the camera name's CRC32 (stable across processes, unlike hash()) folded in."""
    return tf.random.experimental.stateless_fold_in(seed, zlib.crc32(camera.encode()) & 0x7FFFFFFF)


def _as_seed(seed: Any) -> tf.Tensor:
    if isinstance(seed, int):
        return tf.constant([0, seed], tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise InputError(f"augment seed must be an int or an int32/int64 [2] tensor, got {seed.dtype.name}")
    return seed


def _augment_images(images: tf.Tensor, present: tf.Tensor | None, ops: list, params: list) -> tf.Tensor:
    """uint8 [..., h, w, 3] -> augmented uint8 of the same shape; entries not `present` are left as they are."""
    item_shape = images.shape[-3:]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], axis=0))
    flat.set_shape([None, *item_shape])
    out = tf.cast(flat, tf.float32) / 255.0
    for (_, apply), param in zip(ops, params):
        out = tf.clip_by_value(apply(out, param), 0.0, 1.0)
    out = tf.reshape(_to_uint8(out * 255.0), tf.shape(images))
    out.set_shape(images.shape)
    if present is not None:
        present = tf.reshape(present, tf.concat([tf.shape(present), [1, 1, 1]], axis=0))
        out = tf.where(present, out, images)
    return out


def augment(frame: dict, seed: Any, image_augment_kwargs: Mapping[str, Mapping]) -> dict:
    """Augments the `image_<camera>` images of every camera named in `image_augment_kwargs`.

    image_augment_kwargs: camera -> Octo-style kwargs, e.g.
        dict(random_resized_crop=dict(scale=(0.8, 1.0), ratio=(0.9, 1.1)), random_brightness=(0.1,),
             random_contrast=(0.9, 1.1), random_saturation=(0.9, 1.1), random_hue=(0.05,),
             augment_order=("random_resized_crop", "random_brightness", ...))
      Ops run in `augment_order` (default: the order of the keys); ops not in it are not applied.
    seed: stateless seed, int64[2] (or a python int).

    One random draw per camera and op is applied to every timestep of the window and to the goal
    image of that camera in `task`, so goal and observation stay consistent; cameras get
    independent draws (the camera name is folded into the seed). Images are augmented as float32 in
    [0, 1] and returned as uint8 of the same shape. Images whose pad mask (`pad_mask_dict`) says the
    camera is missing are left untouched (zeros after `decode_and_resize`). Depth is not augmented.
    Call after `decode_and_resize`.
    """
    cameras = {camera for _, _, camera in _cameras(frame, IMAGE_PREFIX)}
    plans = {}
    for camera, kwargs in image_augment_kwargs.items():
        if camera not in cameras:
            raise InputError(
                f"image_augment_kwargs names camera '{camera}' but the frame has cameras {sorted(cameras)}"
            )
        plans[camera] = _build_augmentation(camera, kwargs)

    seed = _as_seed(seed)
    frame = {**frame, "observation": dict(frame["observation"])}
    if "task" in frame:
        frame["task"] = dict(frame["task"])
    for camera, ops in plans.items():
        if not ops:
            continue
        camera_seed = _camera_seed(seed, camera)
        params = [sample(tf.random.experimental.stateless_fold_in(camera_seed, i)) for i, (sample, _) in enumerate(ops)]
        key = IMAGE_PREFIX + camera
        for part in ("observation", "task"):
            if key not in frame.get(part, {}):
                continue
            images = frame[part][key]
            if images.dtype != tf.uint8 or images.shape.rank is None or images.shape.rank < 3:
                raise InputError(
                    f"augment needs decoded uint8 [..., h, w, 3] images; {part}.{key} is "
                    f"{images.dtype.name} {images.shape}"
                )
            present = frame[part].get("pad_mask_dict", {}).get(key)
            frame[part][key] = _augment_images(images, present, ops, params)
    return frame


# ----------------------------------------------------------------------------- pipeline


def apply_frame_transforms(
    dataset: DLataset,
    *,
    train: bool,
    resize_size: Mapping[str, tuple[int, int]],
    depth_resize_size: Mapping[str, tuple[int, int]] | None = None,
    image_augment_kwargs: Mapping[str, Mapping] | None = None,
    num_parallel_calls: int = AUTOTUNE,
    seed: int = 0,
) -> DLataset:
    """The frame stage of the pipeline: decode + resize every frame, then (train only) augment.

    Arguments are checked against the dataset's element_spec before any map is built, so a bad
    camera name or augment op fails with one InputError line.
    """
    spec = dataset.element_spec
    if not isinstance(spec, Mapping) or "observation" not in spec:
        raise InputError("apply_frame_transforms needs a frame dataset with an 'observation' dict")
    resize_size = {camera: tuple(int(s) for s in size) for camera, size in resize_size.items()}
    if depth_resize_size is not None:
        depth_resize_size = {camera: tuple(int(s) for s in size) for camera, size in depth_resize_size.items()}
    # Validates the sizes eagerly (decode_and_resize only reads keys here, which the spec has too).
    depth_sizes = resize_size if depth_resize_size is None else depth_resize_size
    _check_sizes([c for _, _, c in _cameras(spec, IMAGE_PREFIX)], resize_size, "image", "resize_size")
    _check_sizes(
        [c for _, _, c in _cameras(spec, DEPTH_PREFIX)],
        depth_sizes,
        "depth",
        "resize_size" if depth_resize_size is None else "depth_resize_size",
    )

    @tf.autograph.experimental.do_not_convert
    def decode(frame):
        return decode_and_resize(frame, resize_size, depth_resize_size)

    dataset = dataset.frame_map(decode, num_parallel_calls)

    if train and image_augment_kwargs:
        image_augment_kwargs = {camera: dict(kwargs.items()) for camera, kwargs in image_augment_kwargs.items()}
        cameras = {c for _, _, c in _cameras(spec, IMAGE_PREFIX)}
        for camera, kwargs in image_augment_kwargs.items():
            if camera not in cameras:
                raise InputError(
                    f"image_augment_kwargs names camera '{camera}' but the frames have cameras {sorted(cameras)}"
                )
            _build_augmentation(camera, kwargs)

        @tf.autograph.experimental.do_not_convert
        def augment_frame(frame, frame_seed):
            return augment(frame, frame_seed, image_augment_kwargs)

        dataset = dataset.frame_map(augment_frame, num_parallel_calls, seed=seed)
    return dataset
