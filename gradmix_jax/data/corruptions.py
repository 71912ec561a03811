"""Common corruptions (Hendrycks & Dietterich, ICLR 2019): CIFAR-10-C, TinyImageNet-C, synthetic.

Three sources of corrupted test images for the paper's §4.4 (Table 5, Fig. 5):

- ``load_cifar10_corrupted(corruption, severity)``: TFDS ``cifar10_corrupted/<config>_<severity>``
  ('test' split, 10,000 images), read like every TFDS set here (``tfds.data_source``, no download).
- ``load_tinyimagenet_corrupted(root, corruption, severity)``: the released Tiny-ImageNet-C folder,
  ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``.
- ``synthetic_corruption(key, images, name, severity)``: re-implements a subset of the published
  corruption functions (their CIFAR-10-C constants) in JAX, for datasets without a -C release and
  for offline smoke runs. Results on synthetic corruptions are NOT the benchmark numbers.

Corruption names follow the file names of Hendrycks' release (``CORRUPTIONS``); TFDS calls two of
them differently (``TFDS_CIFAR10_C_NAMES``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax.data import sources
from gradmix_jax.data.sources import DatasetNotPreparedError
from gradmix_jax.files import as_path

# The 15 benchmark corruptions, in the order of the paper's §4.4 and Hendrycks' Table/Fig. 1.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# TFDS cifar10_corrupted config prefixes (tensorflow_datasets/image_classification/cifar10_corrupted.py).
TFDS_CIFAR10_C_NAMES = {c: c for c in CORRUPTIONS} | {
    "glass_blur": "frosted_glass_blur",
    "elastic_transform": "elastic",
}

# Severity constants of Hendrycks' make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c/),
# i.e. the CIFAR-10-C parameters, indexed by severity - 1.
_GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # std of additive noise on [0, 1] pixels
_SHOT_NOISE = (500.0, 250.0, 100.0, 75.0, 50.0)  # photons per unit intensity (Poisson rate scale)
_IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of salt-and-pepper pixels
_SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)
_GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma in pixels
_DEFOCUS_BLUR = (
    (0.3, 0.4),
    (0.4, 0.5),
    (0.5, 0.6),
    (1.0, 0.2),
    (1.5, 0.1),
)  # (disk radius, alias sigma)
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor towards the per-image channel mean
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to the HSV value channel
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor (PIL BOX there and back)
_JPEG_QUALITY = (80, 65, 58, 50, 40)

# Implemented by synthetic_corruption. Not implemented: glass_blur, motion_blur, zoom_blur, snow,
# frost, fog, elastic_transform (they need ImageMagick's motion blur, the frost photographs, or
# scipy/cv2 geometric warps whose exact conventions were not reproduced here).
SYNTHETIC_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "gaussian_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
)

TINYIMAGENET_C_URL = "https://zenodo.org/record/2536630 (Tiny-ImageNet-C.tar)"


def _check_severity(severity) -> int:
    if not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    return int(severity)


def _check_corruption(corruption: str, allowed: Sequence[str] = CORRUPTIONS) -> None:
    if corruption not in allowed:
        raise ValueError(f"corruption must be one of {list(allowed)}, got {corruption!r}")


# ----------------------------------------------------------------------------- CIFAR-10-C (TFDS)


def cifar10_corrupted_name(corruption: str, severity: int) -> str:
    """TFDS builder/config name, e.g. ('glass_blur', 3) -> 'cifar10_corrupted/frosted_glass_blur_3'."""
    _check_corruption(corruption)
    return f"cifar10_corrupted/{TFDS_CIFAR10_C_NAMES[corruption]}_{_check_severity(severity)}"


def load_cifar10_corrupted(
    corruption: str, severity: int, data_dir: str | None = None, use_disk_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10-C test images of one corruption and severity from TFDS (never downloads).

    Args:
      corruption: one of ``CORRUPTIONS`` (Hendrycks' names; mapped to TFDS config names).
      severity: 1..5.
      data_dir: TFDS data directory (default: TFDS_DATA_DIR or ~/tensorflow_datasets).
      use_disk_cache: keep the decoded arrays as npz under ``<data_dir>/gradmix_jax_cache``.
    Returns:
      (images uint8 [10000, 32, 32, 3], labels int64 [10000]) in CIFAR-10's class order.
    Raises:
      DatasetNotPreparedError naming the builder and the ``tfds build`` command.
    """
    name = cifar10_corrupted_name(corruption, severity)
    data_dir = data_dir or sources.default_data_dir()
    try:
        return sources.load_tfds_split(name, "test", data_dir, use_disk_cache)
    except DatasetNotPreparedError as e:
        raise DatasetNotPreparedError(
            f"CIFAR-10-C config {name!r} is not prepared in {data_dir} (array_record format) and runs "
            f"never download. Prepare it once on a machine with internet (one 2.9 GB download serves "
            f"all 95 configs): tfds build cifar10_corrupted --data_dir={data_dir} "
            f"--file_format=array_record (or only this one: tfds build {name} ...), then copy "
            f"{data_dir}/cifar10_corrupted here or set --data_dir / TFDS_DATA_DIR."
        ) from e


# ----------------------------------------------------------------------------- TinyImageNet-C


def tinyimagenet_wnids(data_dir: str | None = None) -> list[str]:
    """Sorted wnids of the clean TinyImageNet (class index = position), as ``load_tinyimagenet_split``."""
    files = sources._TinyImageNetFiles(data_dir or sources.default_data_dir())
    return sorted(w for w in files.read("wnids.txt").decode().split() if w)


def load_tinyimagenet_corrupted(
    root: str,
    corruption: str,
    severity: int,
    wnids: Sequence[str] | None = None,
    data_dir: str | None = None,
    use_disk_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tiny-ImageNet-C images of one corruption and severity from the released folder layout.

    Layout: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (the Tiny-ImageNet-C tar unpacked;
    corruption folder names = ``CORRUPTIONS``). Labels are the position of the wnid in the SORTED
    wnids of the clean TinyImageNet, the convention of ``load_tinyimagenet_split``.

    Args:
      root: the Tiny-ImageNet-C folder.
      corruption: one of ``CORRUPTIONS``; severity: 1..5.
      wnids: the clean dataset's wnids (sorted inside); None reads ``wnids.txt`` of the clean
        TinyImageNet under ``data_dir``.
      use_disk_cache: keep decoded arrays in ``<root>/gradmix_jax_cache`` when writable.
    Returns:
      (images uint8 [N, 64, 64, 3], labels int64 [N]), files in sorted (wnid, file name) order.
    """
    _check_corruption(corruption)
    severity = _check_severity(severity)
    folder = as_path(root) / corruption / str(severity)
    if not folder.is_dir():
        raise DatasetNotPreparedError(
            f"Tiny-ImageNet-C folder {folder} not found: expected <root>/<corruption>/<severity>/"
            f"<wnid>/*.JPEG with root={root} (unpack {TINYIMAGENET_C_URL}); runs never download"
        )
    cache = sources.cache_folder(root) / f"{corruption}-{severity}.npz"
    if use_disk_cache:
        cached = sources._load_cached(cache)
        if cached is not None:
            return cached
    class_of = {
        w: i
        for i, w in enumerate(sorted(wnids if wnids is not None else tinyimagenet_wnids(data_dir)))
    }
    images, labels = [], []
    for wnid in sorted(p.name for p in folder.iterdir()):
        if not (folder / wnid).is_dir():
            continue
        if wnid not in class_of:
            raise ValueError(
                f"wnid folder {wnid!r} in {folder} is not a class of the clean "
                f"TinyImageNet ({len(class_of)} wnids)"
            )
        for name in sorted(p.name for p in (folder / wnid).iterdir()):
            images.append(sources._decode_rgb((folder / wnid / name).read_bytes()))
            labels.append(class_of[wnid])
    if not images:
        raise DatasetNotPreparedError(f"no images under {folder}")
    out = np.stack(images), np.asarray(labels, np.int64)
    if use_disk_cache:
        sources._store_cached(cache, *out)
    return out


# ----------------------------------------------------------------------------- synthetic


def defocus_kernel(severity: int) -> np.ndarray:
    """Hendrycks' ``disk(radius, alias_blur)`` for ``defocus_blur``, cropped to its support.

    An aliased disk (X^2 + Y^2 <= r^2 on the integer grid, sum 1) smoothed by a 3x3 Gaussian of
    sigma ``alias_blur`` (cv2.GaussianBlur's kernel, exp(-d^2 / 2 sigma^2) normalised). The original
    17x17 array is zero outside this support (r <= 1.5), so cropping changes nothing.
    Returns: float64 [K, K], K odd, sum 1.
    """
    radius, alias = _DEFOCUS_BLUR[_check_severity(severity) - 1]
    r = int(np.floor(radius))
    grid = np.arange(-r, r + 1)
    x, y = np.meshgrid(grid, grid)
    disk = (x**2 + y**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2.0 * alias**2))
    g /= g.sum()
    out = np.zeros((2 * r + 3, 2 * r + 3))
    for dy in range(3):  # full 2-D convolution of the disk with the separable 3x3 Gaussian
        for dx in range(3):
            out[dy : dy + 2 * r + 1, dx : dx + 2 * r + 1] += g[dy] * g[dx] * disk
    return out


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's taps: radius int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] resampling weights of PIL's BOX filter (Pillow Resample.c precompute_coeffs)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for j in range(lo, hi):
            t = (j - center + 0.5) / filterscale
            m[i, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        if m[i].sum() > 0:
            m[i] /= m[i].sum()
    return m


def _round_half_up(x: jax.Array) -> jax.Array:
    return jnp.floor(x + 0.5)


def _correlate_reflect101(x: jax.Array, kernel: np.ndarray) -> jax.Array:
    """cv2.filter2D(x, -1, kernel) per channel (BORDER_REFLECT_101) on [N, H, W, C] float."""
    k = kernel.shape[0] // 2
    padded = jnp.pad(x, ((0, 0), (k, k), (k, k), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    out = jnp.zeros_like(x)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            if kernel[dy, dx] != 0:
                out = out + float(kernel[dy, dx]) * padded[:, dy : dy + h, dx : dx + w, :]
    return out


def _separable_nearest(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """scipy.ndimage.gaussian_filter(mode='nearest') over H and W of [N, H, W, C]."""
    r = len(taps) // 2
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0)), mode="edge")
    x = sum(float(t) * padded[:, i : i + h] for i, t in enumerate(taps))
    padded = jnp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="edge")
    return sum(float(t) * padded[:, :, i : i + w] for i, t in enumerate(taps))


def _brightness(x: jax.Array, shift: float) -> jax.Array:
    """skimage rgb2hsv -> V + shift (clipped) -> hsv2rgb. Grey images: V is the pixel value."""
    import dm_pix

    if x.shape[-1] == 1:
        return jnp.clip(x + shift, 0.0, 1.0)
    if x.shape[-1] != 3:
        raise ValueError(f"brightness needs 1 or 3 channels, got images with {x.shape[-1]}")
    hsv = dm_pix.rgb_to_hsv(x)
    hsv = hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + shift, 0.0, 1.0))
    return dm_pix.hsv_to_rgb(hsv)


# Corruptions whose severity changes array shapes or kernels: compiled per severity. The others
# take their severity constant as a traced scalar, so each compiles once for all five severities.
_SHAPE_DEPENDENT = ("gaussian_blur", "defocus_blur", "pixelate")
_CONSTANTS = {
    "gaussian_noise": _GAUSSIAN_NOISE,
    "shot_noise": _SHOT_NOISE,
    "impulse_noise": _IMPULSE_NOISE,
    "speckle_noise": _SPECKLE_NOISE,
    "contrast": _CONTRAST,
    "brightness": _BRIGHTNESS,
}


@functools.partial(jax.jit, static_argnames=("name", "severity"))
def _corrupt(
    key: jax.Array, images: jax.Array, c: jax.Array, name: str, severity: int
) -> jax.Array:
    """Float [0, 255] result of one corruption on uint8 [N, H, W, C] (before the uint8 cast).

    ``c`` is the severity constant of the scalar-parameter corruptions; ``severity`` (static) is
    used by the shape-dependent ones only.
    """
    x = images.astype(jnp.float32) / 255.0
    _, h, w, _ = images.shape
    if name == "gaussian_noise":
        out = x + c * jax.random.normal(key, x.shape)
    elif name == "shot_noise":
        out = jax.random.poisson(key, x * c, x.shape).astype(jnp.float32) / c
    elif name == "impulse_noise":
        # skimage.util.random_noise(mode='s&p', amount=c): each value independently replaced with
        # probability c, by 1 (salt) or 0 (pepper) with equal probability.
        k_flip, k_salt = jax.random.split(key)
        flip = jax.random.bernoulli(k_flip, c, x.shape)
        salt = jax.random.bernoulli(k_salt, 0.5, x.shape)
        out = jnp.where(flip, salt.astype(jnp.float32), x)
    elif name == "speckle_noise":
        out = x + x * c * jax.random.normal(key, x.shape)
    elif name == "contrast":
        means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
        out = (x - means) * c + means
    elif name == "brightness":
        out = _brightness(x, c)
    elif name == "gaussian_blur":
        out = _separable_nearest(x, _gaussian_taps(_GAUSSIAN_BLUR[severity - 1]))
    elif name == "defocus_blur":
        out = _correlate_reflect101(x, defocus_kernel(severity))
    elif name == "pixelate":
        # PIL BOX resize to int(size * c) and back on uint8: horizontal pass, then vertical, each
        # rounded to uint8 (Pillow's order and 8-bit rounding).
        factor = _PIXELATE[severity - 1]
        small_h, small_w = int(h * factor), int(w * factor)
        y = images.astype(jnp.float32)
        for (src_w, dst_w), (src_h, dst_h) in (
            ((w, small_w), (h, small_h)),
            ((small_w, w), (small_h, h)),
        ):
            y = _round_half_up(jnp.einsum("nhwc,vw->nhvc", y, _pil_box_matrix(src_w, dst_w)))
            y = _round_half_up(jnp.einsum("nhwc,vh->nvwc", y, _pil_box_matrix(src_h, dst_h)))
        return jnp.clip(y, 0.0, 255.0)
    else:  # pragma: no cover - names are validated before
        raise ValueError(name)
    return jnp.clip(out, 0.0, 1.0) * 255.0


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """PIL JPEG encode/decode at ``quality`` (Hendrycks' jpeg_compression), image by image."""
    import io

    from PIL import Image

    out = np.empty_like(images)
    for j, im in enumerate(images):
        gray = im.shape[-1] == 1
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if gray else im).save(buf, "JPEG", quality=quality)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded, np.uint8)
        out[j] = arr[..., None] if gray else arr
    return out


def synthetic_corruption(key: jax.Array, images, name: str, severity: int) -> np.ndarray:
    """One of Hendrycks & Dietterich's corruptions, recomputed (SYNTHETIC, not CIFAR-10-C itself).

    Formulas and severity constants are those of ``make_cifar_c.py`` (hendrycks/robustness), the
    code that generated CIFAR-10-C; inputs of other sizes use the same constants (pixelate scales by
    ``int(size * c)``). Outputs are cast like the original (``np.uint8`` of the float result, i.e.
    truncation). Known differences from the released files: random draws come from JAX, not NumPy;
    impulse noise flips each value independently (current skimage) rather than an exact count;
    pixelate/jpeg go through Pillow's BOX filter (reimplemented, within 1 grey level of Pillow) and
    Pillow's JPEG codec of the installed version. Grey images ([..., 1]) are handled channel-wise;
    brightness on them shifts the grey value (what the HSV round trip does to a grey pixel).

    Args:
      key: JAX PRNG key (used by the noise corruptions; deterministic ones ignore it).
      images: uint8 [N, H, W, C] (numpy or jax), C in {1, 3}.
      name: one of ``SYNTHETIC_CORRUPTIONS``.
      severity: 1..5.
    Returns:
      uint8 numpy [N, H, W, C].
    """
    _check_corruption(name, SYNTHETIC_CORRUPTIONS)
    severity = _check_severity(severity)
    if np.ndim(images) != 4 or np.shape(images)[-1] not in (1, 3):
        raise ValueError(
            f"images must be [N, H, W, C] with C in (1, 3), got shape {np.shape(images)}"
        )
    if np.asarray(images).dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {np.asarray(images).dtype}")
    if name == "jpeg_compression":
        return _jpeg(np.asarray(images), _JPEG_QUALITY[severity - 1])
    c = _CONSTANTS[name][severity - 1] if name in _CONSTANTS else 0.0
    out = _corrupt(
        key,
        jnp.asarray(images),
        jnp.float32(c),
        name=name,
        severity=severity if name in _SHAPE_DEPENDENT else 0,
    )
    return np.asarray(out).astype(np.uint8)  # truncation, as np.uint8(float) in make_cifar_c.py
