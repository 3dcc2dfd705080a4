"""A self-contained HTML report of one evaluated model, optionally side by side with the champion
it was measured against.

`compare_with_champion` reads both evaluation directories (same data, same split), picks the
images whose IoU changed most and renders both models' predictions on them;
`write_model_report` writes one HTML file with every image embedded (no scripts, no network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from segops.config import Config
from segops.data.formats import SampleRef, load_sample, ref_from_row
from segops.data.manifest import dataset_fingerprint, load_dataset
from segops.errors import DatasetError
from segops.evaluate import html_parts as hp
from segops.evaluate.report import HEADLINE, INSTANCE_HEADLINE
from segops.inference import TrainedModel, predict_image

PLOTS = (
    ("curves.png", "Training curves"),
    ("per_class_iou.png", "Per-class IoU"),
    ("confusion_matrix.png", "Confusion matrix (rows: true class)"),
    ("worst_overlays.png", "Worst images: image, truth, prediction"),
)
PER_CLASS_COLUMNS = ("iou", "dice", "precision", "recall", "f1")
PANELS = ("image", "truth", "champion prediction", "challenger prediction")


@dataclass(frozen=True)
class Delta:
    """One value (a metric, or a class's IoU/Dice) for the champion and the challenger."""

    name: str
    champion: float | None
    challenger: float | None

    @property
    def delta(self) -> float | None:
        """challenger - champion; None when either is missing (absent class)."""
        if self.champion is None or self.challenger is None:
            return None
        return self.challenger - self.champion


@dataclass(frozen=True)
class ImageChange:
    """An image whose IoU changed, with a PNG strip: image | truth | champion | challenger."""

    id: str
    champion_iou: float
    challenger_iou: float
    png: bytes

    @property
    def delta(self) -> float:
        return self.challenger_iou - self.champion_iou


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the same data version and split."""

    champion: str
    challenger: str
    split: str
    dataset_hash: str
    headline: tuple[Delta, ...]
    per_class_iou: tuple[Delta, ...]
    per_class_dice: tuple[Delta, ...]
    changed: tuple[ImageChange, ...]  # largest |IoU change| first


def _metrics(eval_dir: str | Path) -> dict:
    return json.loads((Path(eval_dir) / "metrics.json").read_text())


def _check_comparable(
    new: dict, old: dict, challenger: TrainedModel, champion: TrainedModel
) -> None:
    if new["dataset_hash"] != old["dataset_hash"] or new["split"] != old["split"]:
        raise DatasetError(
            "challenger and champion were evaluated on different data: "
            f"{new['split']}@{new['dataset_hash'][:12]} vs "
            f"{old['split']}@{old['dataset_hash'][:12]}; evaluate both on the same data version "
            "and split"
        )
    if tuple(challenger.classes) != tuple(champion.classes):
        raise DatasetError(
            f"challenger classes {list(challenger.classes)} differ from champion classes "
            f"{list(champion.classes)}; such models cannot be compared"
        )


def _deltas(new: dict, old: dict, metric: str) -> tuple[Delta, ...]:
    names = list(new["per_class"])
    return tuple(
        Delta(n, old["per_class"].get(n, {}).get(metric), new["per_class"][n][metric])
        for n in names
    )


def _per_image(eval_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(eval_dir) / "per_image.csv", dtype={"id": str})


def changed_most(
    challenger_eval_dir: str | Path, champion_eval_dir: str | Path, k: int
) -> pd.DataFrame:
    """per_image.csv rows joined on id (`iou_champion`, `iou_challenger`, `delta`): the `k`
    with the largest absolute IoU change, largest first (ties by id). Returns a DataFrame."""
    new, old = _per_image(challenger_eval_dir), _per_image(champion_eval_dir)
    both = old[["id", "iou"]].merge(new[["id", "iou"]], on="id", suffixes=("_champion", ""))
    both = both.rename(columns={"iou": "iou_challenger"}).dropna()
    both["delta"] = both["iou_challenger"] - both["iou_champion"]
    both["size"] = both["delta"].abs()
    both = both.sort_values(["size", "id"], ascending=[False, True], kind="stable")
    return both.head(k).drop(columns="size").reset_index(drop=True)


def _image_change(
    row, challenger: TrainedModel, champion: TrainedModel, sample: tuple[Path, SampleRef]
) -> ImageChange:
    image, truth = load_sample(*sample)  # every format's reader, as in training
    old, _ = predict_image(champion, image)
    new, _ = predict_image(challenger, image)
    png = hp.comparison_strip(image, truth, old, new)
    return ImageChange(row.id, float(row.iou_champion), float(row.iou_challenger), png)


def _sample_paths(cfg: Config, split: str, dataset_hash: str) -> dict[str, tuple[Path, SampleRef]]:
    info = load_dataset(cfg.data, eval_split=split, write_splits=False)
    if dataset_fingerprint(info) != dataset_hash:
        raise DatasetError(
            f"{info.root} is not the data version both models were evaluated on "
            f"({dataset_hash[:12]}); point data.root at that version"
        )
    rows = info.split(split)
    return {str(row["id"]): (info.root, ref_from_row(row)) for row in rows.to_dict("records")}


def compare_with_champion(
    challenger: TrainedModel,
    champion: TrainedModel,
    cfg: Config,
    challenger_eval_dir: str | Path,
    champion_eval_dir: str | Path,
    k: int = 6,
) -> Comparison:
    """Challenger vs champion from their evaluation directories (same data version and split).

    Returns a Comparison: headline and per-class IoU/Dice deltas, and the `k` images whose IoU
    changed most with both predictions rendered. Raises DatasetError when the evaluations or
    `cfg.data` do not refer to the same data, or the models have different classes.
    """
    new, old = _metrics(challenger_eval_dir), _metrics(champion_eval_dir)
    _check_comparable(new, old, challenger, champion)
    top = changed_most(challenger_eval_dir, champion_eval_dir, k)
    paths = _sample_paths(cfg, new["split"], new["dataset_hash"])
    changed = tuple(
        _image_change(r, challenger, champion, paths[r.id]) for r in top.itertuples(index=False)
    )
    return Comparison(
        champion=str(champion.checkpoint),
        challenger=str(challenger.checkpoint),
        split=new["split"],
        dataset_hash=new["dataset_hash"],
        headline=tuple(Delta(m, old.get(m), new.get(m)) for m in _headline_keys(new)),
        per_class_iou=_deltas(new, old, "iou"),
        per_class_dice=_deltas(new, old, "dice"),
        changed=changed,
    )


def _headline_keys(metrics: dict) -> tuple[str, ...]:
    """The headline metrics of an evaluation: COCO mask metrics first for instance models."""
    return tuple(m for m in INSTANCE_HEADLINE if m in metrics) + HEADLINE


def _headline_section(metrics: dict) -> str:
    rows = [(m.replace("_", " "), hp.fmt(metrics.get(m))) for m in _headline_keys(metrics)]
    info = [
        ("split", str(metrics.get("split"))),
        ("images", str(metrics.get("images"))),
        ("checkpoint", str(metrics.get("checkpoint"))),
        ("dataset hash", str(metrics.get("dataset_hash"))),
    ]
    body = hp.table(("metric", "value"), rows) + hp.table(("evaluation", ""), info, "kv")
    return hp.section("Headline metrics", f'<div class="grid">{body}</div>', "metrics")


def _per_class_section(eval_dir: Path) -> str:
    frame = pd.read_csv(eval_dir / "per_class.csv")
    rows = [
        [
            str(r["class"]),
            *(hp.fmt(r[c]) for c in PER_CLASS_COLUMNS),
            *([hp.fmt(r["ap"])] if "ap" in r else []),
            *(hp.fmt(int(r[c])) for c in ("true_pixels", "predicted_pixels") if c in r),
        ]
        for r in frame.to_dict("records")
    ]
    header = ["class", "IoU", "Dice", "precision", "recall", "F1"]
    header += ["mask AP"] if "ap" in frame else []
    header += [
        h for c, h in (("true_pixels", "true px"), ("predicted_pixels", "pred px")) if c in frame
    ]
    return hp.section("Per-class metrics", hp.table(header, rows, "per-class"), "per-class")


def _plots_section(plot_dir: Path) -> str:
    figures = [
        hp.figure(hp.file_png_bytes(plot_dir / name), caption)
        for name, caption in PLOTS
        if (plot_dir / name).is_file()
    ]
    body = "".join(figures) or "<p>No plots were found.</p>"
    return hp.section("Plots", body, "plots")


def _lineage_section(lineage: dict[str, str]) -> str:
    rows = [(str(k), str(v)) for k, v in lineage.items()]
    body = hp.table(("item", "value"), rows, "kv lineage") if rows else "<p>No lineage given.</p>"
    return hp.section("Lineage", body, "lineage")


def _delta_cells(d: Delta) -> list[hp.Cell]:
    return [hp.fmt(d.champion), hp.fmt(d.challenger), hp.signed(d.delta)]


def _class_rows(c: Comparison) -> list[list[hp.Cell]]:
    pairs = zip(c.per_class_iou, c.per_class_dice, strict=True)
    return [[iou.name, *_delta_cells(iou), *_delta_cells(dice)] for iou, dice in pairs]


def _changed_figure(change: ImageChange) -> str:
    text, css = hp.signed(change.delta, 3)
    caption = (
        f"{change.id}: IoU {change.champion_iou:.3f} (champion) → "
        f"{change.challenger_iou:.3f} (challenger), {text} — " + " | ".join(PANELS)
    )
    return f'<div class="changed {css}">{hp.figure(change.png, caption, "mask")}</div>'


def _comparison_section(c: Comparison) -> str:
    who = hp.table(
        ("model", "checkpoint"), [("champion", c.champion), ("challenger", c.challenger)], "kv"
    )
    header = ("metric", "champion", "challenger", "Δ")
    class_header = ("class", "IoU champion", "IoU challenger", "Δ IoU")
    class_header += ("Dice champion", "Dice challenger", "Δ Dice")
    body = (
        f'<p class="meta">Both evaluated on split {hp.esc(c.split)} of data '
        f"{hp.esc(c.dataset_hash)}.</p>{who}"
        + hp.table(header, [[d.name, *_delta_cells(d)] for d in c.headline], "headline-delta")
        + hp.table(class_header, _class_rows(c), "class-delta")
        + f"<h3>Images whose IoU changed most ({len(c.changed)})</h3>"
        + "".join(_changed_figure(x) for x in c.changed)
    )
    return hp.section("Challenger vs champion", body, "comparison")


def write_model_report(
    eval_dir: str | Path,
    out_html: str | Path,
    title: str,
    lineage: dict[str, str],
    comparison: Comparison | None = None,
) -> Path:
    """Write one self-contained HTML file (images as base64 `data:` URIs, inline CSS, no
    scripts) for the evaluation in `eval_dir`: headline metrics, per-class table, plots,
    `lineage` and, if given, the comparison with the champion. Returns the file's path."""
    eval_dir, out = Path(eval_dir), Path(out_html)
    metrics = _metrics(eval_dir)
    sections = [
        _headline_section(metrics),
        _per_class_section(eval_dir),
        _plots_section(eval_dir / "plots"),
        _lineage_section(lineage),
    ]
    if comparison is not None:
        sections.append(_comparison_section(comparison))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"split {metrics.get('split')} · {metrics.get('images')} images · {generated}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(hp.page(title, subtitle, sections), encoding="utf-8")
    return out
