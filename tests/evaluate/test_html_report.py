import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from PIL import Image

from segops.errors import DatasetError
from segops.evaluate.html_report import compare_with_champion, write_model_report
from segops.evaluate.report import evaluate_checkpoint
from segops.inference import load_trained
from segops.train.loop import train

K = 4
LINEAGE = {
    "data md5": "0123abcd",
    "git commit": "deadbeef",
    "config hash": "cafe",
    "flow run": "<script>alert('x')</script> & co",
}


def _run(shapes_root: Path, out: Path, *overrides: str) -> tuple:
    cfg = tiny_config(shapes_root, out, *overrides)
    train(cfg)
    report = evaluate_checkpoint(cfg, out_dir=out / "eval")
    return cfg, load_trained(out / "checkpoints" / "best.pt"), Path(report.out_dir)


@pytest.fixture(scope="module")
def report(shapes_root, tmp_path_factory):
    """Champion trained 1 epoch (predicts one class), challenger 6 at a higher learning rate;
    both evaluated on val; the report written."""
    base = tmp_path_factory.mktemp("html")
    _, champion, champion_eval = _run(shapes_root, base / "champion", "train.epochs=1")
    cfg, challenger, challenger_eval = _run(
        shapes_root, base / "challenger", "train.epochs=6", "train.lr=1e-2"
    )
    comparison = compare_with_champion(
        challenger, champion, cfg, challenger_eval, champion_eval, k=K
    )
    path = write_model_report(
        challenger_eval, base / "report" / "model.html", "Model <v2>", LINEAGE, comparison
    )
    return path, comparison, challenger_eval, champion_eval


def _images(html: str) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", html)


def test_comparison_picks_images_whose_iou_changed_most(report):
    _, comparison, challenger_eval, champion_eval = report
    new = pd.read_csv(challenger_eval / "per_image.csv", dtype={"id": str}).set_index("id")
    old = pd.read_csv(champion_eval / "per_image.csv", dtype={"id": str}).set_index("id")
    change = (new["iou"] - old["iou"]).abs().sort_values(ascending=False)
    assert len(comparison.changed) == K
    assert [round(abs(c.delta), 9) for c in comparison.changed] == [
        round(v, 9) for v in change.iloc[:K]
    ]
    for c in comparison.changed:
        assert c.champion_iou == pytest.approx(old.loc[c.id, "iou"])
        with Image.open(io.BytesIO(c.png)) as img:  # four panels side by side, enlarged
            assert img.width > 4 * img.height >= 4 * 128
    names = [d.name for d in comparison.per_class_iou]
    assert names == ["background", "ellipse", "rectangle", "triangle", "cross"]
    miou = next(d for d in comparison.headline if d.name == "mean_iou")
    assert miou.delta == pytest.approx(miou.challenger - miou.champion) and miou.delta > 0
    assert abs(comparison.changed[0].delta) > 0.05


def test_report_is_self_contained_with_every_section(report):
    path, comparison, _, _ = report
    html = path.read_text(encoding="utf-8")
    for anchor in ("metrics", "per-class", "plots", "lineage", "comparison"):
        assert f'<section id="{anchor}">' in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    sources = _images(html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # 4 plots (curves, per-class IoU, confusion, worst overlays) + K comparison strips
    assert len(sources) == 4 + K
    for s in sources:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    per_class = html.split('<table class="per-class">')[1].split("</table>")[0]
    assert per_class.count("<tr>") == 1 + 5  # header + five classes
    assert html.count('<div class="changed') == K
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert "Model &lt;v2&gt;" in html and "<v2>" not in html
    assert '<td class="up">+' in html  # the challenger improved somewhere, shown in green
    for value in ("0123abcd", "deadbeef", "cafe"):
        assert value in html
    assert all(c.id in html for c in comparison.changed)
    assert path.stat().st_size < 3_000_000


def test_report_without_comparison(report, tmp_path):
    _, _, challenger_eval, _ = report
    path = write_model_report(challenger_eval, tmp_path / "r.html", "solo", {}, None)
    html = path.read_text(encoding="utf-8")
    assert 'id="comparison"' not in html and len(_images(html)) == 4


def test_comparison_refuses_other_data(report, shapes_root, tmp_path):
    _, _, challenger_eval, champion_eval = report
    other = tmp_path / "other"
    shutil.copytree(champion_eval, other)
    metrics = (other / "metrics.json").read_text()
    (other / "metrics.json").write_text(metrics.replace('"dataset_hash": "', '"dataset_hash": "x'))
    model = load_trained(challenger_eval.parent / "checkpoints" / "best.pt")
    cfg = tiny_config(shapes_root, tmp_path)
    with pytest.raises(DatasetError, match="different data"):
        compare_with_champion(model, model, cfg, challenger_eval, other)


CHECK_SCRIPT = """
<img id="control" alt="broken on purpose" src="data:image/png;base64,AAAA">
<script>
window.addEventListener("load", () => {
  const all = [...document.images], control = document.getElementById("control");
  const imgs = all.filter((i) => i !== control);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = `loaded=${ok} total=${imgs.length} control=${control.naturalWidth}`;
  document.body.appendChild(out);
});
</script>
"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    flags += ["--hide-scrollbars", "--virtual-time-budget=5000"]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="no chromium binary on PATH (Debian: apt-get install chromium)",
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    path = report[0]
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _chromium("--dump-dom", probe.as_uri())
    found = re.search(r"loaded=(\d+) total=(\d+) control=(\d+)", dom.stdout)
    assert found, f"no image check in the DOM; chromium said:\n{dom.stderr[-2000:]}"
    loaded, total, control = map(int, found.groups())
    assert total == 4 + K and loaded == total and control == 0
    shot = tmp_path / "shot.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
