"""The figures a saliency paper is read through, and one page that holds them (written by evaluate).

- :func:`example_grid`: the seed paper's Fig. 4, titled columns (image, ground truth, prediction, the
  prediction over the image as a heat map) and each row's NSS and CC; the rows are the best, median and worst
  images by NSS, not the first few.
- :func:`progression`: its Fig. 3, the chosen val image's map epoch by epoch, as one grid with the epoch on
  each panel and as an animated GIF.
- :func:`loss_curves`: G, D, content and validation content losses over the epochs, the adversarial phase
  shaded; beside them, once the adversarial phase has begun, the discriminator's diagnostics on the
  held-out batch (salgan/gan_diagnostics.py): accuracy against chance, mean D(real) and D(fake), dead units.
- :func:`report_page`: ``reports/report.html``, one self-contained page (images embedded, no network): the
  run's settings, the eight metrics beside the centre bias, the ceiling and the seed paper's Table I, and the
  three figures.

matplotlib draws them (headless, the Agg backend).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from salgan.imaging import overlay, to_uint8
from salgan.layout import HISTORY_LOSSES
from salgan.metrics import METRIC_NAMES

# the labels of the discriminator's diagnostics (salgan/gan_diagnostics.py) in the report's panel
DIAGNOSTICS = {
    "d_accuracy": "D accuracy",
    "d_real": "mean D(real)",
    "d_fake": "mean D(fake)",
    "d_dead_units": "dead D units",
}
PANEL_INCHES = 2.2


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def pick_rows(nss: Sequence[float], count: int) -> list[int]:
    """``count`` image indices from best to worst NSS, evenly spread: best, ..., median, ..., worst."""
    order = list(np.argsort(-np.asarray(nss, dtype=np.float64), kind="stable"))
    if count >= len(order):
        return order
    positions = np.linspace(0, len(order) - 1, count).round().astype(int)
    return [order[p] for p in positions]


def example_grid(images, gt_maps, predictions, rows: list[dict], count: int, path: Path) -> list[int]:
    """The seed paper's Fig. 4 at ``path``; returns the image indices shown, best NSS first.

    ``images`` (N, h, w, 3) and ``gt_maps`` (N, h, w) at the prepared size, ``predictions`` the post-processed
    maps at the original size, ``rows`` the per-image scores (``name``, ``nss``, ``cc``).
    """
    from PIL import Image

    plt = _pyplot()
    chosen = pick_rows([row["nss"] for row in rows], count)
    titles = ("image", "ground truth", "prediction", "prediction over the image")
    figure, axes = plt.subplots(
        len(chosen), 4, figsize=(4 * PANEL_INCHES, len(chosen) * PANEL_INCHES * 0.8), squeeze=False
    )
    for r, index in enumerate(chosen):
        image = np.asarray(images[index])
        height, width = image.shape[:2]
        predicted = np.asarray(Image.fromarray(predictions[index].astype(np.float32)).resize((width, height)))
        panels = (image, np.asarray(gt_maps[index]), to_uint8(predicted), overlay(image, predicted))
        for c, panel in enumerate(panels):
            axis = axes[r][c]
            axis.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(titles[c], fontsize=10)
        row = rows[index]
        axes[r][0].set_ylabel(f"{row['name'][-12:]}\nNSS {row['nss']:.2f}  CC {row['cc']:.2f}", fontsize=8)
    figure.suptitle("Val examples: best, median and worst by NSS", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return chosen


def progression(snapshots: Sequence[Path], png: Path, gif: Path, columns: int = 6) -> None:
    """The seed paper's Fig. 3: the epoch snapshots (``epoch_NNN.png``) as one grid at ``png``, each panel
    titled with its epoch, and as an animated GIF at ``gif`` (half a second a frame)."""
    from PIL import Image, ImageDraw

    plt = _pyplot()
    frames = [(int(path.stem.split("_")[-1]), np.asarray(Image.open(path).convert("L"))) for path in snapshots]
    if not frames:
        raise ValueError("no snapshots: the train stage writes one per epoch into its snapshots folder")
    rows = -(-len(frames) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES * 0.8))
    for axis in np.asarray(axes).ravel():
        axis.axis("off")
    for axis, (epoch, frame) in zip(np.asarray(axes).ravel(), frames, strict=False):
        axis.imshow(frame, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"epoch {epoch}", fontsize=9)
    figure.suptitle("One val image's predicted map, epoch by epoch", fontsize=11)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)
    animation, scale = [], max(1, -(-256 // frames[0][1].shape[1]))  # at least 256 px wide, to be seen
    for epoch, frame in frames:
        picture = Image.fromarray(frame).convert("RGB")
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
        ImageDraw.Draw(picture).text((4, 4), f"epoch {epoch}", fill=(255, 64, 64))
        animation.append(picture)
    animation[0].save(gif, save_all=True, append_images=animation[1:], duration=500, loop=0)


def loss_curves(history: list[dict], path: Path) -> None:
    """:func:`loss_figure` saved at ``path``."""
    plt = _pyplot()
    figure = loss_figure(history)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def loss_figure(history: list[dict]):
    """The losses per epoch (``models/history.json``), the adversarial epochs shaded; with a second panel
    beside them, the discriminator's held-out diagnostics, when the history has any (:data:`DIAGNOSTICS`)."""
    plt = _pyplot()
    diagnosed = any(r.get(key) is not None for r in history for key in DIAGNOSTICS)
    figure, axes = plt.subplots(1, 2 if diagnosed else 1, figsize=(12 if diagnosed else 7, 3.6), squeeze=False)
    losses = axes[0][0]
    _curves(losses, history, {key: key for key in HISTORY_LOSSES})
    losses.set_ylabel("loss")
    losses.set_title("Losses", fontsize=10)
    if diagnosed:
        gan = axes[0][1]
        gan.axhline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance (accuracy 0.5)")
        _curves(gan, history, DIAGNOSTICS)
        gan.set_ylim(-0.02, 1.02)
        gan.set_ylabel("share / probability")
        gan.set_title("Discriminator on held-out val pairs", fontsize=10)
    figure.tight_layout()
    return figure


def _curves(axis, history: list[dict], keys: dict[str, str]) -> None:
    epochs = [record["epoch"] for record in history]
    for key, label in keys.items():
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if r.get(key) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), marker=".", label=label)
    adversarial = [r["epoch"] for r in history if r.get("phase") == "adversarial"]
    if adversarial:
        axis.axvspan(min(adversarial) - 0.5, max(adversarial) + 0.5, color="0.92", label="adversarial phase")
    axis.set_xlabel("epoch")
    axis.legend(fontsize=8)


# --- the page -------------------------------------------------------------------------------------------


def _embedded(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def report_page(
    metrics: dict, published: dict[str, dict], settings: dict[str, object], figures: dict[str, Path]
) -> str:
    """``reports/report.html``: self-contained (every image embedded), no script, no network."""
    columns = {"model": metrics, **metrics["baselines"]}
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["metric", *columns, *published])
    body = []
    for key in METRIC_NAMES:
        cells = [f"<td>{columns[c][key]:.4f}</td>" if key in columns[c] else "<td>-</td>" for c in columns]
        cells += [f"<td>{values[key]:.3f}</td>" if key in values else "<td>-</td>" for values in published.values()]
        body.append(f'<tr data-metric="{key}"><th>{key}</th>{"".join(cells)}</tr>')
    listed = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in settings.items()
    )
    images = "".join(
        f'<figure><img id="{name}" alt="{html.escape(caption)}" src="{_embedded(path)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, (caption, path) in figures.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SalGAN evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; text-align: left; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>SalGAN evaluation</h1>
<p>Val split of data version <code>{html.escape(str(metrics.get("data_version", "?")))}</code>,
{metrics.get("n_images", "?")} images, scored at the original resolution. Published numbers: the SALICON test set
(compare like with like).</p>
<h2>Metrics</h2>
<table id="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<h2>Settings</h2>
<table id="settings"><tbody>{listed}</tbody></table>
<h2>Figures</h2>
{images}
</body></html>
"""
