"""Plots written beside the metrics: curves, per-class IoU, confusion matrix, worst overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def palette(n: int = 256) -> np.ndarray:
    """Pascal VOC's colour map: `[n, 3]` uint8, class 0 black, 255 (ignore) near white."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an HxWx3 uint8 image (background and ignore left clear)."""
    colours = palette()[mask].astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    keep = (mask == 0) | (mask == 255)
    return np.where(keep[..., None], image, blend.round()).astype(np.uint8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVES = {
    "val_miou": "val mean IoU",
    "val_pixel_acc": "val pixel accuracy",
    "val_AP": "val mask AP",
    "val_AP50": "val mask AP50",
}


def plot_curves(history: pd.DataFrame, path: Path) -> Path:
    """Train/val loss and the validation metrics in `history` (mean IoU, pixel accuracy;
    mask AP and AP50 for instance models) per epoch. A loss never measured is left out."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(history["epoch"], history["train_loss"], label="train")
    if history["val_loss"].notna().any():
        ax1.plot(history["epoch"], history["val_loss"], label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    for column, label in CURVES.items():
        if column in history:
            ax2.plot(history["epoch"], history[column], label=label)
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation metrics")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_per_class(per_class: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of per-class IoU (absent classes shown as such)."""
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(per_class) + 1.2))
    values = per_class["iou"].fillna(0)
    colours = [tuple(c / 255) for c in palette()[: len(per_class)]]
    ax.barh(per_class["class"], values, color=colours, edgecolor="black")
    for y, v in enumerate(per_class["iou"]):
        ax.text(
            min(float(np.nan_to_num(v)), 0.9) + 0.01,
            y,
            "absent" if np.isnan(v) else f"{v:.3f}",
            va="center",
        )
    ax.set(xlim=(0, 1), xlabel="IoU", title="Per-class IoU")
    ax.invert_yaxis()
    return _save(fig, path)


def plot_confusion(mat: np.ndarray, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix heatmap (each row: where that true class went)."""
    rows = mat.sum(1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros(mat.shape, np.float64), where=rows > 0)
    side = 1.5 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 25:
        for (i, j), v in np.ndenumerate(norm):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > 0.5 else "black",
            )
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_overlays(samples: list[dict], path: Path) -> Path:
    """Grid: one row per sample (dicts with id, image, truth, pred, iou and optionally
    `metric`, the name of the score in `iou`), worst first."""
    fig, axes = plt.subplots(len(samples), 3, figsize=(7.5, 2.5 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples, strict=True):
        panels = (s["image"], overlay(s["image"], s["truth"]), overlay(s["image"], s["pred"]))
        titles = (s["id"], "truth", f"prediction ({s.get('metric', 'IoU')} {s['iou']:.3f})")
        for ax, img, title in zip(row, panels, titles, strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    return _save(fig, path)
