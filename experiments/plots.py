"""Figures of the attribution experiments (matplotlib): Fig. 7/10 map grids, Fig. 8 S_M curves and
GradMix views (image, map, mixed view).

The maps and curves come from ``gradmix_jax.attribution_analysis``; these functions only draw them
and write PNGs through ``gradmix_jax.files.save_figure`` (any epath filesystem).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gradmix_jax.files import save_figure

__all__ = ["save_map_grid", "save_activated_fraction_plot", "save_gradmix_views"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        return image[..., 0], "gray"
    return image, None


def _finish_image_grid(plt, fig, axes, row_labels, title, path) -> None:
    """Row labels, no ticks, the title; writes the PNG and closes the figure."""
    for i, label in enumerate(row_labels):
        axes[i, 0].set_ylabel(label, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def save_map_grid(
    path: str,
    images,
    maps_by_model: Mapping[str, np.ndarray],
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
) -> None:
    """Fig. 7/10-style grid: first row the images, then one row per model with its map overlaid.

    Args:
      path: output PNG path.
      images: ``[B, H, W, C]`` (C = 1 or 3), float in [0, 1] or uint8.
      maps_by_model: row label -> ``[B, H, W]`` maps (same H, W as ``images``). For display each
        map is min-max scaled per image (``jet`` colour map, alpha 0.5), as LayerCAM viewers do.
      title: figure title.
      column_titles: optional ``B`` strings shown above the image row (e.g. class, known/unknown).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in (1, 3), got shape {images.shape}")
    if not maps_by_model:
        raise ValueError("maps_by_model must hold at least one model's maps, got an empty mapping")
    b, h, w = images.shape[:3]
    for name, maps in maps_by_model.items():
        if np.shape(maps) != (b, h, w):
            raise ValueError(
                f"maps_by_model[{name!r}] must have shape {(b, h, w)} (images' B, H, W), "
                f"got {np.shape(maps)}"
            )
    if column_titles is not None and len(column_titles) != b:
        raise ValueError(f"column_titles must hold {b} strings, got {len(column_titles)}")

    plt = _pyplot()
    rows = 1 + len(maps_by_model)
    fig, axes = plt.subplots(rows, b, figsize=(1.6 * b + 1.2, 1.6 * rows + 0.6), squeeze=False)
    for j in range(b):
        img, cmap = _display_image(images[j])
        axes[0, j].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if column_titles is not None:
            axes[0, j].set_title(column_titles[j], fontsize=8)
        for i, maps in enumerate(maps_by_model.values(), start=1):
            m = np.asarray(maps[j], np.float64)
            m = (m - m.min()) / (m.max() - m.min() + 1e-12)
            axes[i, j].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[i, j].imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    _finish_image_grid(plt, fig, axes, ["image", *maps_by_model.keys()], title, path)


def save_activated_fraction_plot(
    path: str,
    thresholds,
    curves_by_model: Mapping[str, np.ndarray],
    title: str | None = None,
    ylabel: str = r"$S_M$",
) -> None:
    """Fig. 8-style plot: S_M against τ (log x-axis), one line per model.

    Args:
      path: output PNG path.
      thresholds: ``[T]`` positive thresholds.
      curves_by_model: label -> ``[T]`` S_M values.
      title: figure title.
      ylabel: y-axis label.
    """
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any(thresholds <= 0):
        raise ValueError(
            f"thresholds must be a non-empty 1-D array of values > 0 (log axis), got {thresholds!r}"
        )
    if not curves_by_model:
        raise ValueError("curves_by_model must hold at least one curve, got an empty mapping")
    for name, curve in curves_by_model.items():
        if np.shape(curve) != thresholds.shape:
            raise ValueError(
                f"curves_by_model[{name!r}] must have shape {thresholds.shape}, "
                f"got {np.shape(curve)}"
            )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves_by_model.items():
        ax.plot(thresholds, curve, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel(r"threshold $\tau$")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def save_gradmix_views(
    path: str,
    images,
    maps: np.ndarray,
    mixed,
    masked: np.ndarray,
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
) -> None:
    """Three rows: the images, their attribution maps overlaid, and their GradMix views.

    Args:
      images, mixed: ``[B, H, W, C]`` (C = 1 or 3) in [0, 1] or uint8.
      maps: ``[B, H, W]``; masked: ``[B]`` fraction of each image the paste covers (shown).
    """
    images, mixed, maps = np.asarray(images), np.asarray(mixed), np.asarray(maps)
    b = images.shape[0]
    if mixed.shape != images.shape or maps.shape != images.shape[:3] or np.shape(masked) != (b,):
        raise ValueError(
            f"images {images.shape}, maps {maps.shape}, mixed {mixed.shape} and masked "
            f"{np.shape(masked)} must be [B,H,W,C], [B,H,W], [B,H,W,C] and [B]"
        )
    plt = _pyplot()
    fig, axes = plt.subplots(3, b, figsize=(1.6 * b + 1.2, 1.6 * 3 + 0.6), squeeze=False)
    for j in range(b):
        img, cmap = _display_image(images[j])
        m = np.asarray(maps[j], np.float64)
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        axes[0, j].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[1, j].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[1, j].imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        view, cmap = _display_image(mixed[j])
        axes[2, j].imshow(view, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[2, j].set_title(f"{100 * float(masked[j]):.0f}% pasted", fontsize=7)
        if column_titles is not None:
            axes[0, j].set_title(column_titles[j], fontsize=8)
    _finish_image_grid(plt, fig, axes, ["image", "LayerCAM map", "GradMix view"], title, path)
