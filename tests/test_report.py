"""The report of a real tiny run (digits: experts -> STM distillation with evaluations):
every section is there, the HTML is self-contained, the figures open and have their sizes."""
import base64
import json
import re
import shutil

import pytest
import torch
from PIL import Image

from trajdistill.cli import main
from trajdistill.distill import DistillConfig, Distiller, open_buffer
from trajdistill.io import read_jsonl
from trajdistill.display import display_images
from trajdistill.plots import stage_events
from trajdistill.report import build_report

SECTIONS = ["Synthetic images", "Each class: synthetic vs class mean vs real",
            "Accuracy over iterations", "Matching loss and stages", "Why each stage ended",
            "Stage timeline", "Learning rates", "Confusion matrix", "Per-class accuracy"]
FIGURES = ["synthetic.png", "classes.png", "accuracy.png", "matching.png", "stage_test.png",
           "lrs.png", "confusion.png", "per_class.png"]


@pytest.fixture(scope="module")
def run(digits, digits_buffers, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("report")
    splits = digits
    store = open_buffer(digits_buffers / "digits" / "ConvNetD2", digits)
    cfg = DistillConfig(ipc=2, syn_steps=5, iterations=30, lr_img=30, lr_teacher=[0.01],
                        eval_it=15, num_eval=1, epoch_eval_train=20, pix_init="noise",
                        min_duration=10, checkpoint_every=15)
    Distiller(cfg, splits, store, root / "run", progress=False).run()
    return splits, root / "run"


def test_report_has_every_section_is_self_contained_and_its_figures_open(run):
    splits, run_dir = run
    html = build_report(run_dir, splits=splits).read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in html.replace("&#x27;", "'"), title
    srcs = re.findall(r"<img src='([^']*)'", html)
    assert len(srcs) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in srcs)
    for name in FIGURES:
        png = (run_dir / "figures" / name).read_bytes()
        assert base64.b64encode(png).decode() in html, name  # the embedded copy is the file
        assert f"figures/{name}" in html                      # and links to it
    assert "<th>iteration</th><th>event</th>" in html and ">stop<" in html
    assert "Accuracy (%)" in html and "chosen (iteration" in html  # table from evals.jsonl
    assert "<th>validation</th><th>test</th>" in html and "chosen on validation accuracy" in html
    assert (run_dir / "report.md").exists()
    # every figure opens, at a size a page can show
    for name in FIGURES:
        with Image.open(run_dir / "figures" / name) as im:
            im.load()
            assert im.format == "PNG" and 200 <= min(im.size) and max(im.size) <= 2500, (name, im.size)


def test_stage_timeline_follows_the_metrics(run):
    _, run_dir = run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    events = stage_events(metrics)
    assert events[-1]["event"] == "stop" and events[-1]["it"] == metrics[-1]["it"]
    ups = [r["it"] for r in metrics if r.get("level_up")]
    assert [e["it"] for e in events if e["event"] == "level-up"] == ups
    for e in events:
        if e["event"] == "level-up":
            assert e["r"] is not None and (e["r"] < e["threshold"] or e["r"] > e["rise_threshold"])


def test_report_md_has_the_stage_timeline_rows_of_the_html(run):
    """report.md's "Stage timeline" is a table with one row per event, as the HTML's."""
    splits, run_dir = run
    build_report(run_dir, splits=splits)
    md = (run_dir / "report.md").read_text()
    section = md.split("## Stage timeline", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    assert rows[0].startswith("| iteration | event | cap after")
    events = stage_events(read_jsonl(run_dir / "metrics.jsonl"))
    assert len(rows) == 1 + len(events) and events
    assert [r.split(" | ")[1] for r in rows[1:]] == [e["event"] for e in events]
    assert rows[-1].startswith(f"| {events[-1]['it']} | stop |")


def test_demo_style_results_and_cli_rebuild(run, tmp_path, capsys):
    """results.json (as the demo writes it) adds the baseline table and their per-class bars;
    `trajdistill report RUN --dataset digits` rebuilds the page with the class comparison."""
    splits, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    evals = read_jsonl(copy / "evals.jsonl")
    res = evals[-1]["ConvNetD2"]
    (copy / "results.json").write_text(json.dumps({
        "table": [{"name": "STM distilled", "mean": res["mean"], "std": res["std"], "n": 1},
                  {"name": "class mean", "mean": 0.5, "std": 0.01, "n": 1}],
        "confusion": res["confusion"], "notes": "tiny test run",
        "details": {"STM distilled": {"ConvNetD2": res},
                    "class mean": {"ConvNetD2": {**res, "per_class": [0.5] * 10}}}}))
    for f in (copy / "figures").iterdir():
        f.unlink()
    assert main(["report", str(copy), "--dataset", "digits"]) == 0
    html = (copy / "report.html").read_text()
    assert "STM distilled" in html and "class mean" in html and "tiny test run" in html
    assert (copy / "figures" / "classes.png").exists() and (copy / "figures" / "per_class.png").exists()


def test_display_clips_at_two_and_a_half_std_and_scales_each_image():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0] = 100.0  # an outlier must not squash the rest
    x[1] = torch.linspace(-1, 1, 16).view(1, 4, 4)
    d = display_images(x)
    assert d.min() >= 0 and d.max() <= 1
    assert d[0].max() == 1 and d[0].min() == 0 and d[1].max() == 1 and d[1].min() == 0
    s = x.std()
    assert d[0, 0, 0, 0] == 1 and float(x.mean() + 2.5 * s) < 100


def test_many_classes_and_images_stay_readable(tmp_path):
    """100 classes (CIFAR-100 sized): the grid shows at most 10 images per class, ipc 1 wraps
    into rows of 10, confusion and per-class figures keep a fixed size."""
    from trajdistill.data.base import Preprocess
    from trajdistill.display import save_synthetic_grid, synthetic_grid
    from trajdistill.plots import plot_confusion, plot_per_class
    from trajdistill.synthetic import SyntheticSet

    def figure_size(n_classes, path):
        names = [f"c{i}" for i in range(n_classes)]
        cm = torch.eye(n_classes, dtype=torch.long).tolist()
        with Image.open(plot_confusion(cm, names, tmp_path / f"cm{path}", "t")) as a, \
                Image.open(plot_per_class([("a", [0.5] * n_classes)], names,
                                          tmp_path / f"pc{path}")) as b:
            return a.size, b.size

    classes = [f"c{i}" for i in range(100)]
    pre = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for ipc, (cols, rows) in ((12, (10, 100)), (1, (10, 10))):
        syn = SyntheticSet(torch.randn(100 * ipc, 3, 8, 8),
                           torch.arange(100).repeat_interleave(ipc), [0.01], pre,
                           {"classes": classes}, "ConvNet")
        grid, got_ipc = synthetic_grid(syn, 100)
        # square cells: the grid's shape is its cell counts' (10 of 12 per class; rows of 10)
        assert got_ipc == ipc and abs(grid.size[0] / grid.size[1] - cols / rows) < 0.02
        with Image.open(save_synthetic_grid(syn, classes, tmp_path / f"g{ipc}.png")) as im:
            assert max(im.size) < 9000
    # beyond the labelled limit the figures stop growing with the class count
    assert figure_size(100, ".png") == figure_size(300, "3.png")
    assert max(max(s) for s in figure_size(100, ".png")) < 2000


def test_galaxy_runs_show_the_class_view_first(run, tmp_path):
    from trajdistill.report import CLASS_VIEW, is_galaxy_run
    splits, run_dir = run
    def class_view_first(html):
        html = html.replace("&#x27;", "'")
        return html.index(f">{CLASS_VIEW}<") < html.index(">Synthetic images<")
    assert not class_view_first(build_report(run_dir, splits=splits).read_text())
    galaxy = tmp_path / "galaxy"
    shutil.copytree(run_dir, galaxy)
    config = json.loads((galaxy / "config.json").read_text())
    (galaxy / "config.json").write_text(json.dumps({**config, "dsa_strategy": "galaxy"}))
    assert class_view_first(build_report(galaxy, splits=splits).read_text())
    md = (galaxy / "report.md").read_text()
    assert md.index(CLASS_VIEW) < md.index("Synthetic images")
    assert is_galaxy_run({"dataset": "GZoo2_aug"}, {}) and is_galaxy_run({"crop": "center-half"}, {})
    assert not is_galaxy_run({"dataset": "CIFAR10"}, {"dsa_strategy": "color_crop"})


def test_report_says_when_the_run_was_inexact(run, tmp_path):
    """A run with --autocast bf16 says so among the settings; a float32 run says nothing."""
    splits, run_dir = run
    assert "<b>autocast</b>" not in build_report(run_dir, splits=splits).read_text()
    copy = tmp_path / "bf16_run"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "autocast": "bf16"}))
    assert "<b>autocast</b> bf16" in build_report(copy, splits=splits).read_text()


def test_the_chosen_set_is_one_evaluation_for_every_model():
    """The table shows every model at the evaluation that chose synthetic_best.pt (the first
    model's best validation accuracy, the earliest on a tie), not each at its own best."""
    from trajdistill import records
    from trajdistill.report import _table_from_evals

    def ev(it, a, b):
        return {"it": it, "lrs": [0.01], "selected_on": "val",
                **{m: {"mean": v, "std": 0.0, "accuracies": [v], "val_mean": v, "val_std": 0.0}
                   for m, v in (("A", a), ("B", b))}}
    evals = [ev(0, 0.5, 0.9), ev(10, 0.7, 0.4), ev(20, 0.7, 0.6)]
    assert records.chosen(evals)["it"] == 10
    assert {r["name"]: r["mean"] for r in _table_from_evals(evals)} == {
        "A: chosen (iteration 10)": 0.7, "A: last (iteration 20)": 0.7,
        "B: chosen (iteration 10)": 0.4, "B: last (iteration 20)": 0.6}


def test_the_distiller_saves_the_set_the_report_calls_chosen(run):
    from trajdistill import records
    from trajdistill.synthetic import SyntheticSet
    _, run_dir = run
    chosen = records.chosen(read_jsonl(run_dir / "evals.jsonl"))
    assert SyntheticSet.load(run_dir / "synthetic_best.pt").meta["iteration"] == chosen["it"]


def test_the_heldout_legend_names_the_epochs_after_min_start_epoch(tmp_path, monkeypatch):
    """Stage cap c holds out epochs min_start_epoch + c -> + expert_epochs (schedule.py)."""
    from trajdistill import plots
    legends = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: legends.append(
        fig.axes[1].get_legend_handles_labels()[1]))
    metrics = [{"it": i, "loss": 1.0, "lrs": [0.01], "start_epoch": 4, "heldout": 1.0 - i / 10,
                "cap": 1 + i // 2} for i in range(4)]
    plots.plot_matching(metrics, tmp_path / "m.png", min_start_epoch=3, expert_epochs=2)
    assert legends == [["stage cap 1 (epoch 4->6)", "stage cap 2 (epoch 5->7)"]]
