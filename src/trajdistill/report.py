"""The report of a run directory: report.html (self-contained) and report.md.

Everything reads the run directory's files (config.json, metrics.jsonl, evals.jsonl,
synthetic_*.pt, results.json, final.json), so `trajdistill report RUN_DIR` can rebuild it at
any time. The HTML embeds its figures (base64 PNG), so the single file can be mailed or
attached; the PNGs stay in RUN_DIR/figures/ as well. Given the real data (`splits`), it also
shows each class's synthetic image(s) beside the class mean and a few real training images.
The pictures come from display.py, the curves from plots.py, the records' shapes from
records.py.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import torch

from . import ddranking, records
from .data.base import DatasetSplits
from .display import CLIP_STD, save_class_comparison, save_synthetic_grid
from .io import FileFormatError, load_json, read_jsonl
from .plots import (plot_accuracy, plot_confusion, plot_lrs, plot_matching, plot_per_class,
                    plot_stage_test, stage_events)
from .records import (checked_derived, checked_evals, checked_final, checked_metrics,
                      checked_results, selection_note)
from .synthetic import SyntheticSet

CLASS_VIEW = "Each class: synthetic vs class mean vs real"


def is_galaxy_run(data: dict, config: dict) -> bool:
    """Galaxy Zoo builds, galaxy-cropped folders, or runs with the galaxy augmentation."""
    return (str(data.get("dataset", "")).lower().startswith("gzoo2")
            or data.get("crop") == "center-half" or config.get("dsa_strategy") == "galaxy")


def build_report(run_dir: str | Path, classes: list[str] | None = None,
                 splits: DatasetSplits | None = None) -> Path:
    """Write figures/ and report.html (self-contained) + report.md for a run directory.

    `splits` (the real data the run used) adds the per-class comparison of synthetic
    images with class means and real examples. Returns the HTML path."""
    run = Path(run_dir)
    figs = run / "figures"
    for path, folder in ((figs, True), (run / "report.html", False), (run / "report.md", False)):
        if path.exists() and path.is_dir() != folder:  # the report writes there
            raise FileFormatError(f"{path}: expected a {'folder' if folder else 'file'}, the "
                                  f"report writes its {'figures' if folder else 'page'} there")
    metrics = checked_metrics(read_jsonl(run / "metrics.jsonl"), run / "metrics.jsonl")
    evals = checked_evals(read_jsonl(run / "evals.jsonl"), run / "evals.jsonl")
    results = (checked_results(load_json(run / "results.json"), run / "results.json")
               if (run / "results.json").exists() else {})
    config = load_json(run / "config.json") if (run / "config.json").exists() else {}
    syn_path = run / "synthetic_best.pt" if (run / "synthetic_best.pt").exists() else run / "synthetic_last.pt"
    syn = SyntheticSet.load(syn_path) if syn_path.exists() else None
    if splits is not None and classes is None:
        classes = splits.classes
    classes = list(classes or (syn.data.get("classes") if syn else None) or [])
    best = records.chosen(evals)  # the evaluation that chose synthetic_best.pt
    best_model = records.models(best)[0] if best else None

    sections: list[dict] = []  # {title, img, caption, html}

    def add(title, img=None, caption="", body="", md=""):
        sections.append({"title": title, "img": img, "caption": caption, "html": body, "md": md})

    if syn is not None:
        save_synthetic_grid(syn, classes, figs / "synthetic.png")
        add("Synthetic images", "figures/synthetic.png",
            f"{syn_path.name} (iteration {syn.meta.get('iteration', '?')}); learned lr(s): "
            f"{', '.join(f'{v:.4g}' for v in syn.lrs)}. Shown in pixel space"
            f"{' (ZCA inverted)' if syn.preprocess.zca is not None else ''}, clipped at "
            f"{CLIP_STD} std of the set and stretched per image.")
    if syn is not None and syn.soft_labels is not None:
        add("Learned soft labels", caption="Each synthetic image's label distribution "
            f"(softmax of its learned logits): the top {TOP_LABELS} classes.",
            body=_soft_label_table(syn, classes))
    if syn is not None and splits is not None and len(splits.classes) == int(syn.labels.max()) + 1:
        save_class_comparison(syn, splits, figs / "classes.png")
        add(CLASS_VIEW, "figures/classes.png",
            "Row per class: the synthetic image(s), the mean of the class's training images (the "
            "class-mean baseline, contrast-stretched the same way) and random real training images.")
    if plot_accuracy(evals, figs / "accuracy.png"):
        add("Accuracy over iterations", "figures/accuracy.png",
            f"Mean ± std test accuracy of {len(evals[0][best_model]['accuracies'])} fresh networks "
            f"per evaluation; the chosen set ({best_model}): {100 * best[best_model]['mean']:.2f} "
            f"% at iteration {best['it']}.")
    if metrics:
        plot_matching(metrics, figs / "matching.png", config.get("min_start_epoch") or 0,
                      config.get("expert_epochs") or 1)
        add("Matching loss and stages", "figures/matching.png",
            "Left: the normalised matching loss of every start epoch on one chart. Middle: STM's "
            "held-out next-epoch loss, one line per stage. Right: the stage cap over iterations "
            "with level-ups, fine-tuning and the stop.")
        if plot_stage_test(metrics, figs / "stage_test.png"):
            add("Why each stage ended", "figures/stage_test.png",
                "The stage test every 10 held-out losses: a level-up when r falls below "
                "-sigma·s (loss falling) or rises above 3·s (over-fitting).")
        events = stage_events(metrics)
        add("Stage timeline", body=_events_table(events), md=_events_markdown(events))
        plot_lrs(metrics, figs / "lrs.png",
                 config.get("iterations") if config.get("pace_lr_img") else None)
        raises = [r for r in metrics if "lr_img_raised" in r]
        add("Learning rates", "figures/lrs.png",
            f"Final learned lr(s): {', '.join(f'{v:.4g}' for v in metrics[-1].get('lrs', []))}. "
            "Right: how far the images moved from their start"
            + (f"; the image lr was raised {len(raises)} time(s) where they fell behind the "
               "pace (--pace_lr_img)." if raises else "."))
    cm = results.get("confusion")
    cm_title = "distilled set"
    if not cm and best is not None:
        cm, cm_title = best[best_model]["confusion"], f"{best_model}, iteration {best['it']}"
    if cm and classes and len(cm) == len(classes):
        plot_confusion(cm, classes, figs / "confusion.png", f"{cm_title}: confusion (row-normalised)")
        add("Confusion matrix", "figures/confusion.png",
            "Summed over the evaluation networks, rows normalised: row = true class.")
    per_class = _per_class_rows(results, best, best_model)
    if per_class and classes and all(len(a) == len(classes) for _, a in per_class):
        plot_per_class(per_class, classes, figs / "per_class.png")
        add("Per-class accuracy", "figures/per_class.png", body=_per_class_table(per_class, classes))

    if syn is not None and is_galaxy_run(syn.data, config):
        # for astronomers the question is what the network saw in each class: that view first
        sections.sort(key=lambda sec: sec["title"] != CLASS_VIEW)
    if checked_derived(config.get("derived"), run / "config.json"):
        add("Derived settings", caption="Settings not given on the command line, derived from "
            "the data and the expert buffer (defaults.py), and what each was derived from.",
            body=_derived_table(config["derived"]), md=_derived_markdown(config["derived"]))
    table = results.get("table") or _table_from_evals(evals)
    final = (checked_final(load_json(run / "final.json"), run / "final.json")
             if (run / "final.json").exists() else None)
    if (run / ddranking.RESULTS_FILE).exists():
        path = run / ddranking.RESULTS_FILE
        scored = ddranking.checked_results(load_json(path), path)
        own = _own_figure(final, best, best_model)
        add("DD-Ranking scores", caption=_ddranking_caption(scored, own),
            body=_ddranking_html(scored), md=_ddranking_markdown(scored))
    html_path = run / "report.html"
    note = selection_note(evals)
    html_path.write_text(_html(run, table, sections, results, config, syn, note, final))
    (run / "report.md").write_text(_markdown(run.name, table, sections, note, final))
    return html_path


# ----------------------------------------------------------------------------- verdict, derived

def _final_rows(final: dict) -> list[tuple[str, str, str, str]]:
    """(set, lr, validation, test) per set of final.json; the distilled set also at its
    learned lr (the reference's protocol)."""
    rows = []
    for name, r in final.get("sets", {}).items():
        if r.get("draws"):  # a baseline over random draws: each network trained on its own
            n = r["draws"]
            name = f"{name}, {n} draw{'s' if n != 1 else ''} (one per network)"
        how = "the median of each network's own" if r.get("lrs") else "chosen"
        rows.append((name, f"{r['lr']:.3g} ({how} on validation)",
                     f"{100 * r['val_mean']:.2f} ± {100 * r.get('val_std', 0.0):.2f}",
                     f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"))
        if r.get("learned"):
            e = r["learned"]
            rows.append((f"{name}, at its learned lr", f"{e['lr']:.3g} (learned)",
                         f"{100 * e['val_mean']:.2f}", f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}"))
    return rows


def _final_html(final: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>"
                   for a, b, c, d in _final_rows(final))
    colour = "#1a7f37" if final.get("beats_all") else "#b35900"
    return (f"<h2>Verdict</h2><p style='color:{colour}'><b>{html.escape(final['message'])}</b></p>"
            f"<table><tr><th>set ({html.escape(str(final.get('model', '')))})</th><th>lr</th>"
            f"<th>validation (%)</th><th>test (%)</th></tr>{rows}</table>")


def _final_markdown(final: dict) -> list[str]:
    lines = ["## Verdict", "", f"**{final['message']}**", "",
             "| set | lr | validation (%) | test (%) |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _final_rows(final)]
    return lines + [""]


# ----------------------------------------------------------------------------- DD-Ranking

DDRANKING_ROWS = (  # (key in scores/accuracies, shown as, percentage points?, meaning)
    ("LRS", "LRS", False, "label-robust score, 0-100: (e^alpha - e^-1)/(e - e^-1), "
     "alpha = w IOR - (1 - w) HLR"),
    ("HLR", "HLR (%)", True, "acc(real, hard) - acc(syn, hard): lower is better"),
    ("IOR", "IOR (%)", True, "acc(syn, own evaluation) - acc(random real, the same)"),
    ("ARS", "ARS", False, "augmentation-robust score, 0-100, of beta = gamma (gain with "
     "augmentation) + (1 - gamma) (gain without)"),
    ("aug_gain", "gain over random, augmented (%)", True, "acc(syn, aug) - acc(random, aug)"),
    ("no_aug_gain", "gain over random, no augmentation (%)", True,
     "acc(syn, no aug) - acc(random, no aug)"),
    ("real_hard", "acc(real, hard) (%)", True, "the whole training set, class labels"),
    ("syn_hard", "acc(syn, hard) (%)", True, "the set with class labels"),
    ("syn_aug", "acc(syn, own evaluation) (%)", True, "its labels and lr, augmented"),
    ("rdm_aug", "acc(random, own evaluation) (%)", True, "random real images, same size"),
    ("syn_naug", "acc(syn, no augmentation) (%)", True, ""),
    ("rdm_naug", "acc(random, no augmentation) (%)", True, ""),
)


def _ddranking_rows(result: dict) -> list[tuple[str, str, str]]:
    """(name, mean ± std over rounds, meaning) per score and accuracy."""
    rows = []
    for key, name, percent, meaning in DDRANKING_ROWS:
        d = result["scores"].get(key) or result["accuracies"].get(key)
        scale = 100 if percent else 1
        rows.append((name, f"{scale * d['mean']:.2f} ± {scale * d['std']:.2f}", meaning))
    return rows


def _own_figure(final: dict | None, best: dict | None, best_model: str | None) -> str:
    """This package's own figure for the set, to read beside DD-Ranking's."""
    if final:
        rows = _final_rows(final)
        return "; ".join(f"{a}: {d} % at lr {b}" for a, b, _, d in rows)
    if best is not None:
        e = best[best_model]
        return (f"{best_model}, iteration {best['it']}: {100 * e['mean']:.2f} ± "
                f"{100 * e['std']:.2f} %")
    return ""


def _ddranking_caption(result: dict, own: str) -> str:
    p = result["protocol"]
    text = (f"DD-Ranking's scores of {result.get('set', 'the set')} ({result.get('labels')} "
            f"labels) under its protocol: {result.get('ddranking_model')}, {p.get('epochs')} "
            f"epochs (lr x0.1 half way), the set at its learned lr, random real images (and a "
            f"set without one lr) at the best test accuracy of the lr grid {p.get('lr_grid')}, "
            f"mean ± std over {p.get('rounds')} rounds; w = "
            f"{p.get('lrs_lambda')}, gamma = {p.get('ars_lambda')}. ")
    if own:
        text += f"This package's own protocol for the set: {own}. "
    diffs = result.get("differences") or []
    if diffs:
        text += "Differences from DD-Ranking's evaluator: " + "; ".join(diffs) + "."
    return text


def _ddranking_html(result: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in _ddranking_rows(result))
    return f"<table><tr><th>score</th><th>mean ± std</th><th>what it is</th></tr>{rows}</table>"


def _ddranking_markdown(result: dict) -> str:
    return "\n".join(["| score | mean ± std | what it is |", "| --- | --- | --- |"]
                     + [f"| {a} | {b} | {c} |" for a, b, c in _ddranking_rows(result)])


def _derived_table(derived: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(d.get('value')))}</td>"
                   f"<td>{html.escape(str(d.get('from')))}</td></tr>" for k, d in derived.items())
    return f"<table><tr><th>setting</th><th>value</th><th>derived from</th></tr>{rows}</table>"


def _derived_markdown(derived: dict) -> str:
    return "\n".join(["| setting | value | derived from |", "| --- | --- | --- |"]
                     + [f"| {k} | {d.get('value')} | {d.get('from')} |" for k, d in derived.items()])


def _per_class_rows(results: dict, best: dict | None, best_model: str | None):
    rows = []
    details = results.get("details") or {}
    for name, res in details.items():
        if isinstance(res, dict) and res:
            first = next(iter(res.values()))
            if isinstance(first, dict) and "per_class" in first:
                rows.append((name, first["per_class"]))
    if not rows and best is not None:
        rows.append((f"distilled ({best_model}, it {best['it']})", best[best_model]["per_class"]))
    return rows


def _table_from_evals(evals: list[dict]) -> list[dict]:
    """Per evaluation model: the chosen set (the one evaluation records.chosen picks, the same
    iteration for every model) and the last evaluation."""
    best = records.chosen(evals)
    if best is None:
        return []
    out = []
    for m in records.models(best):
        last = [e for e in evals if m in e][-1]
        for label, e in (("chosen", best), ("last", last)):
            row = {"name": f"{m}: {label} (iteration {e['it']})", "mean": e[m]["mean"],
                   "std": e[m]["std"], "n": len(e[m]["accuracies"])}
            if "val_mean" in e[m]:
                row.update(val_mean=e[m]["val_mean"], val_std=e[m]["val_std"])
            out.append(row)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if not math.isnan(v) else ""
    return str(v)


def _events_table(events: list[dict]) -> str:
    head = ["iteration", "event", "cap after", "n", "r", "threshold", "rise threshold", "reason"]
    keys = ["it", "event", "cap", "n", "r", "threshold", "rise_threshold", "why"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(e.get(k)))}</td>" for k in keys) + "</tr>"
                   for e in events)
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{rows}</table>"
            if events else "<p>no stage events</p>")


def _events_markdown(events: list[dict]) -> str:
    """The stage timeline as the HTML shows it, as a Markdown table."""
    if not events:
        return "no stage events"
    head = ["iteration", "event", "cap after", "n", "r", "threshold", "rise threshold", "reason"]
    keys = ["it", "event", "cap", "n", "r", "threshold", "rise_threshold", "why"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_fmt(e.get(k)).replace("|", "\\|") for k in keys) + " |"
              for e in events]
    return "\n".join(lines)


TOP_LABELS = 3  # classes shown per image in the soft-label table


def soft_label_rows(syn: SyntheticSet, classes: list[str]) -> list[tuple[int, str, list[tuple[str, float]]]]:
    """(image index, its class, [(class, probability)] of the top classes) per image."""
    names = classes or [str(i) for i in range(syn.soft_labels.shape[1])]
    probs = torch.softmax(syn.soft_labels.float(), dim=1)
    top = probs.topk(min(TOP_LABELS, probs.shape[1]), dim=1)
    return [(i, names[int(syn.labels[i])],
             [(names[int(c)], float(p)) for p, c in zip(top.values[i], top.indices[i])])
            for i in range(len(syn.labels))]


def _soft_label_table(syn: SyntheticSet, classes: list[str]) -> str:
    rows = "".join(f"<tr><td>{i}</td><td>{html.escape(c)}</td><td>" +
                   ", ".join(f"{html.escape(n)} {100 * p:.1f} %" for n, p in top) + "</td></tr>"
                   for i, c, top in soft_label_rows(syn, classes))
    return ("<table><tr><th>image</th><th>class</th><th>label distribution (top classes)</th>"
            f"</tr>{rows}</table>")


def _per_class_table(rows, classes) -> str:
    head = "<tr><th>class</th>" + "".join(f"<th>{html.escape(n)}</th>" for n, _ in rows) + "</tr>"
    body = "".join("<tr><td>" + html.escape(c) + "</td>" +
                   "".join(f"<td>{100 * a[i]:.1f}</td>" for _, a in rows) + "</tr>"
                   for i, c in enumerate(classes))
    return f"<table>{head}{body}</table>"


def _table_rows(table: list[dict]) -> list[tuple[str, str, str, str]]:
    """(set, validation accuracy or "", test accuracy, networks) per row."""
    return [(r["name"],
             f"{100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f}" if "val_mean" in r else "",
             f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}", str(r.get("n", ""))) for r in table]


def _embed(run: Path, rel: str) -> str:
    data = base64.b64encode((run / rel).read_bytes()).decode()
    return f"data:image/png;base64,{data}"


_CONFIG_KEYS = ("dataset", "method", "ipc", "syn_steps", "expert_epochs", "max_start_epoch",
                "init_epoch", "sigma", "max_duration", "lr_img", "lr_lr", "lr_teacher", "lr_mode",
                "pix_init", "iterations", "eval_models", "num_eval", "epoch_eval_train", "dsa",
                "gradient", "num_trajectories", "seed")


def _html(run: Path, table: list[dict], sections, results: dict, config: dict,
          syn: SyntheticSet | None, note: str = "", final: dict | None = None) -> str:
    title = run.name
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{v}</td><td>{b}</td><td>{c}</td></tr>"
                   for a, v, b, c in _table_rows(table))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 9px;font-size:90%}th{background:#f3f3f3}img{max-width:100%}"
             "nav a{margin-right:1em}.cap{color:#555}</style></head><body>",
             f"<h1>Distillation report: {html.escape(title)}</h1>"]
    facts = dict((k, config[k]) for k in _CONFIG_KEYS if k in config)
    if config.get("autocast", "off") != "off":  # an inexact run says so
        facts["autocast"] = config["autocast"]
    if syn is not None:
        facts.setdefault("dataset", syn.data.get("dataset"))
        facts["images"] = f"{len(syn.labels)} x {list(syn.images.shape[1:])}"
        facts["zca"] = syn.preprocess.zca is not None
    if facts:
        parts.append("<p>" + "; ".join(f"<b>{html.escape(k)}</b> {html.escape(str(v))}"
                                       for k, v in facts.items()) + "</p>")
    parts.append("<nav>" + "".join(f"<a href='#s{i}'>{html.escape(s['title'])}</a>"
                                   for i, s in enumerate(sections)) + "</nav>")
    if final:
        parts.append(_final_html(final))
    if rows:
        parts.append("<h2>Accuracy (%) — mean ± std over evaluation networks</h2>"
                     "<table><tr><th>set</th><th>validation</th><th>test</th><th>networks</th></tr>"
                     f"{rows}</table>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
    if results.get("notes"):
        parts.append(f"<p>{html.escape(str(results['notes']))}</p>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s['title'])}</h2>")
        if s["img"]:
            parts.append(f"<a href='{s['img']}'><img src='{_embed(run, s['img'])}' "
                         f"alt='{html.escape(s['title'])}'></a>")
        if s["caption"]:
            parts.append(f"<p class='cap'>{html.escape(s['caption'])}</p>")
        if s["html"]:
            parts.append(s["html"])
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(title: str, table: list[dict], sections, note: str = "",
              final: dict | None = None) -> str:
    lines = [f"# Distillation report: {title}", ""]
    if final:
        lines += _final_markdown(final)
    if table:
        lines += ["| set | validation accuracy (%) | test accuracy (%) | networks |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {v} | {b} | {c} |" for a, v, b, c in _table_rows(table)]
        lines.append("")
        if note:
            lines += [note, ""]
    for s in sections:
        lines += [f"## {s['title']}", ""]
        if s["img"]:
            lines += [f"![{s['title']}]({s['img']})", ""]
        if s["caption"]:
            lines += [s["caption"], ""]
        if s.get("md"):
            lines += [s["md"], ""]
    return "\n".join(lines)
