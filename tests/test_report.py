"""The report pages: each paper table as printed (rows, columns, number, caption), paper / ours / Δ and a verdict
in each cell, the overview, provenance, runs with their logs, partial results."""

import re

import pandas as pd
import pytest

from cnnrepro import config as cfg
from cnnrepro.report import latex, pages, table_view
from cnnrepro.runtime import io
from cnnrepro.tables import aggregate, gather, layout, paper
from cnnrepro.tables import summary as run_summary
from cnnrepro.tables import verdicts as vd
from tests.test_aggregate import REPO, fake_record, write_inputs

PNG = bytes.fromhex("89504e470d0a1a0a")  # a PNG signature is enough: the page only embeds the bytes


def aggregated(config, root, records=None, partial_drop=()):
    """What the aggregate rules write for every study, from fake records (``records`` replaces some; the runs in
    ``partial_drop`` have no record and no log). Returns (tables, runs.csv, logs)."""
    metrics, bench = write_inputs(config, root, records)
    metrics = [p for p in metrics if io.read_json(p)["run_id"] not in partial_drop]
    tables, parts = {}, []
    logs = {run.id: root / "logs" / f"{run.id}.log" for run in cfg.expand_runs(config)}
    for run_id, path in logs.items():
        if run_id not in partial_drop:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("epoch 1/1\n")
    for study in config["studies"]:
        names = layout.study_tables(config, study)
        paper = {n: cfg.paper_table_path(config, t) for n, t in
                 ((layout.table_name(config, t), t) for t in config["studies"][study]["tables"])}
        out = {n: root / "tables" / n for n in names}
        tables.update(out)
        ids = {r.id for r in cfg.expand_runs(config, [study])}
        aggregate.aggregate_study(config, study, [p for p in metrics if io.read_json(p)["run_id"] in ids],
                                  [p for p in bench if io.read_json(p)["study"] == study], paper, out,
                                  root / "tables" / study / "runs.csv", root / "tables" / study / "models.csv",
                                  {k: v for k, v in logs.items() if k in ids}, partial=bool(partial_drop))
        parts.append(root / "tables" / study / "runs.csv")
    gather.gather(parts, root / "tables" / "runs.csv")
    return tables, root / "tables" / "runs.csv", logs


def render_all(config, root, records=None, figures=None):
    tables, runs, _ = aggregated(config, root, records)
    html, tex = root / "report" / "index.html", root / "report" / "report.tex"
    pages.render(config, list(config["studies"]), tables, runs, figures or {}, html, tex, REPO)
    return html.read_text(), tex.read_text()


def section(page, anchor):
    """The HTML of one table: from its heading to the next heading."""
    start = page.index(f'<h3 id="{anchor}">')
    return page[start:page.index("<h3", start + 5)]


def grid(html_table):
    """[[cell text, ...], ...] of the body rows of a rendered table (tags stripped)."""
    body = html_table[html_table.index("<tbody>"):html_table.index("</tbody>")]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        rows.append([re.sub(r"<[^>]+>", " ", c).split() for c in cells])
    return rows


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The full report of config.yaml plus the sixth study, from fake records (seed 001's MobileNet at 84.00 %)."""
    import copy

    from tests.conftest import REPO as root

    raw = cfg.deep_merge(cfg.load_yaml(root / "config.yaml"), cfg.load_yaml(root / "tests/data/sixth_study.yaml"))
    import os

    before = os.getcwd()
    os.chdir(root)
    try:
        config = cfg.validate(copy.deepcopy(raw))
        study = "seed001_resnet_mobilenet_cifar10"
        mobilenet = f"{study}/cifar10/mobilenet/none/base/seed0"
        records = {mobilenet: fake_record(study, "cifar10", "mobilenet", top1=0.84,
                                          extra={"device_name": "NVIDIA A100",
                                                 "speed": {"deviations": ["bf16 autocast"],
                                                           "numerics": {"precision": "bf16 autocast"}}})}
        folder = tmp_path_factory.mktemp("full")
        figure = folder / "figures" / "curves.png"
        figure.parent.mkdir()
        figure.write_bytes(PNG)
        figure.with_suffix(".pdf").write_bytes(b"%PDF-1.4")
        html, tex = render_all(config, folder, records, {study: {str(figure): "Learning curves of seed 001."}})
    finally:
        os.chdir(before)
    return config, folder, html, tex


def test_every_study_table_number_and_caption_is_on_the_page(full):
    config, _, page, latex = full
    for name, study in config["studies"].items():
        assert f'<section id="{name}">' in page and study["title"] in page
        for table in study["tables"]:
            anchor = re.sub(r"[^A-Za-z0-9_-]+", "-", layout.table_name(config, table))
            heading = table["number"] or layout.table_name(config, table)
            assert f'<h3 id="{anchor}">{heading}' in page, anchor
            assert table["caption"].replace('"', "&#34;") in page
    assert "Tabela com o comparativo de resultados pelas redes avaliadas no CIFAR-10" in latex
    assert "Tabela 6 of SqueezeNet-DSC dissertation" in latex
    assert latex.strip().endswith("\\end{document}") and "\\toprule" in latex and "\\resizebox" not in latex


def test_seed003_is_classes_by_experiments_with_the_macro_average(full):
    _, _, page, _ = full
    table = section(page, "seed003_table1_f1_test-csv")
    header = re.findall(r"<th[^>]*>(.*?)</th>", table[:table.index("</thead>")])
    assert header == ["classe", "CNN", "CNN com data augmentation", "CNN sem polling", "FCNN",
                      "FCNN com data augmentation"]
    rows = grid(table)
    assert [r[0] for r in rows] == [[str(c)] for c in range(10)] + [["macro", "avg"]]
    assert all(len(r) == 6 for r in rows)
    # Class 0, CNN: the paper's 0.9114 and ours (fake F1 of class 0: 0.0), in the paper's 4 decimals.
    assert rows[0][1][:3] == ["0.9114", "0.0000", "−0.9114"]


def test_seed002s_per_model_tables_are_metrics_by_dataset(full):
    _, _, page, _ = full
    table = section(page, "seed002_table1_squeezenet-csv")
    header = re.findall(r"<th[^>]*>(.*?)</th>", table[:table.index("</thead>")])
    assert header == ["Base", "CIFAR-10", "CIFAR-100"]
    rows = grid(table)
    assert [" ".join(r[0]) for r in rows] == ["Acurácia Top-1 (%)", "Acurácia Top-5 (%)", "Parâmetros",
                                              "Tamanho (MB)", "Tempo GPU (ms)", "Tempo CPU (ms)"]
    params = rows[2]
    assert params[1][:2] == ["746,638", "1234"]  # the paper's thousands separators; ours (fake) beside
    gpu = " ".join(rows[4][1])
    assert gpu.startswith("2.64 ± 0.10") and "no GPU here" in gpu  # the ± pair in one cell
    cpu = " ".join(rows[5][1])
    assert cpu.startswith("5.35 ± 0.31") and "5.00 ± 0.50" in cpu


def test_a_cell_shows_paper_ours_delta_and_the_verdict_with_its_reason(full):
    _, _, page, _ = full
    table = section(page, "seed001_accuracy_cifar10-csv")
    cell = re.search(r'<td class="num (\w+)" title="([^"]*)">(.*?)</td>', table[table.index("MobileNet"):], re.S)
    css, title, text = cell.groups()
    words = re.sub(r"<[^>]+>", " ", text).split()
    # 84.18 printed; ours 84.00 (bf16: marked †); Δ −0.18 pp: within 1.5 pp.
    assert words[:5] == ["84.18", "84.00", "†", "−0.18", "pp"] and css == "agree"
    assert title == "agree: within ±1.5 pp"
    assert "computed with: bf16 autocast" in table
    # ResNet (fake 50 %) differs.
    assert 'class="num differ" title="differ: outside ±1.5 pp"' in table


def test_the_overview_counts_verdicts_per_study_and_lists_the_largest_differences(full):
    config, _, page, latex = full
    overview = page[page.index('<section id="overview">'):page.index('<section id="provenance">')]
    assert overview.count("comparable numbers agree") == len(config["studies"])
    seed001 = overview[overview.index("seed001_resnet_mobilenet_cifar10"):]
    assert "<b>1 of 2</b> comparable numbers agree" in seed001
    assert "§6 (text)</a>, ResNet · Acurácia (%): paper 83.68, ours 50.00 (Δ −33.68 pp) — outside ±1.5 pp" in seed001
    # Seed 002: the GPU numbers cannot be compared here, and the overview says so.
    seed002 = overview[overview.index("seed002_squeezenet_dsc"):]
    assert "no GPU here (20)" in seed002
    # Notes of a cell go with its difference.
    assert "Note: MB = " in seed002 or "Note: The authors selected" in seed002
    assert "comparable numbers agree" in latex and "Largest differences" in latex


def test_provenance_names_code_config_software_hardware_and_each_runs_log(full):
    config, folder, page, latex = full
    block = page[page.index('<section id="provenance">'):page.index("</section>", page.index('id="provenance"'))]
    assert "sha256 <code>" in block and re.search(r"[0-9a-f]{64}", block)
    for software in ("Python", "torch", "torchvision", "CUDA", "cuDNN", "Snakemake"):
        assert software in block
    assert "GPU:" in block and "CPU:" in block and "Threads" in block
    assert "git " in block  # a commit, or "not a git checkout"
    runs = page[page.index('id="seed001_resnet_mobilenet_cifar10-runs"'):]
    runs = runs[:runs.index("</table>")]
    assert "NVIDIA A100" in runs and "bf16 autocast" in runs
    # Each run links its log, relative to the page.
    log = "../logs/seed001_resnet_mobilenet_cifar10/cifar10/mobilenet/none/base/seed0.log"
    assert f'<a href="{log}">log</a>' in runs
    assert (folder / "report" / log).resolve().is_file()
    assert "sha256" in latex and "Snakemake" in latex


def test_figures_are_embedded_in_the_html_and_included_by_the_latex(full):
    _, _, page, latex = full
    assert '<img src="data:image/png;base64,iVBORw0KGgo' in page and "Learning curves of seed 001." in page
    assert "\\includegraphics[width=0.9\\linewidth,height=0.42\\textheight,keepaspectratio]{../figures/curves.pdf}" \
        in latex


def test_a_study_page_has_its_tables_only_and_links_the_full_report(full, tmp_path):
    config, folder, _, _ = full
    study = "tiny_mnist_fcnn_vs_cnn"
    tables = {n: folder / "tables" / n for n in layout.study_tables(config, study)}
    html, tex = tmp_path / study / "index.html", tmp_path / study / "report.tex"
    pages.render(config, [study], tables, folder / "tables" / study / "runs.csv", {}, html, tex, REPO)
    page = html.read_text()
    assert '<section id="tiny_mnist_fcnn_vs_cnn">' in page and '<section id="seed000_resnet_mnist">' not in page
    assert '<a href="../index.html">full report</a>' in page
    # The sixth study has no layout: its rows are the models (the constant source column is named once).
    table = section(page + "<h3", "tiny_table-csv")
    assert [r[0] for r in grid(table)] == [["FCNN"], ["CNN"]]
    assert "(source: made-up test fixture)" in table


def test_partial_results_mark_failed_and_not_run_runs_and_still_render(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    study = "seed001_resnet_mobilenet_cifar10"
    failed, not_run = (f"{study}/cifar10/{m}/none/base/seed0" for m in ("mobilenet", "resnet18_cifar"))
    metrics, bench = write_inputs(config, tmp_path / "in")
    metrics = [p for p in metrics if io.read_json(p)["run_id"] not in (failed, not_run)]
    files = {}
    for name in config["studies"]:
        ids = [r.id for r in cfg.expand_runs(config, [name])]
        logs = {i: tmp_path / "logs" / f"{i}.log" for i in ids}
        if name == study:
            logs[failed].parent.mkdir(parents=True, exist_ok=True)
            logs[failed].write_text("Traceback ...\nRuntimeError: boom\n")
        files[name] = pages.StudyFiles(
            metrics=[p for p in metrics if io.read_json(p)["run_id"] in ids],
            bench=[p for p in bench if io.read_json(p)["study"] == name],
            paper_tables={layout.table_name(config, t): cfg.paper_table_path(config, t)
                          for t in config["studies"][name]["tables"]},
            tables={n: tmp_path / "tables" / n for n in layout.study_tables(config, name)},
            runs=tmp_path / "tables" / name / "runs.csv", models=tmp_path / "tables" / name / "models.csv",
            logs=logs, figures={}, html=tmp_path / "report" / name / "index.html",
            tex=tmp_path / "report" / name / "report.tex")
    assert pages.render_partial(config, files, tmp_path / "tables" / "runs.csv", tmp_path / "tables" / "models.csv",
                                 tmp_path / "report" / "index.html", tmp_path / "report" / "report.tex", REPO)
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="partial"' in page and "1 failed" in page and "1 not run" in page
    table = section(page, "seed001_accuracy_cifar10-csv")
    assert '<span class="na">failed</span>' in table and '<span class="na">not run</span>' in table
    runs = page[page.index(f'id="{study}-runs"'):]
    assert '<td class="status-failed">failed</td>' in runs and '<td class="status-not-run">not run</td>' in runs
    assert (tmp_path / "report" / study / "index.html").is_file()
    assert pd.read_csv(tmp_path / "tables" / "seed001_accuracy_cifar10.csv")["status_ours"].tolist() == [
        "failed", "not run"]
    # Nothing ran at all: no partial report is written.
    for name in files:
        files[name].metrics, files[name].logs = [], {}
    assert not pages.render_partial(config, files, tmp_path / "x.csv", tmp_path / "y.csv", tmp_path / "z.html",
                                     tmp_path / "z.tex")


def test_a_missing_table_file_is_an_error_naming_it(full, tmp_path):
    config, folder, _, _ = full
    tables = {n: folder / "tables" / n for s in config["studies"] for n in layout.study_tables(config, s)}
    del tables["seed003_table1_f1_test.csv"]
    with pytest.raises(ValueError, match="seed003_table1_f1_test.csv"):
        pages.render(config, list(config["studies"]), tables, folder / "tables" / "runs.csv", {},
                      tmp_path / "index.html", tmp_path / "report.tex")


def test_latex_escaping():
    assert latex.escape("a_b & 5% #1 $x$") == "a\\_b \\& 5\\% \\#1 \\$x\\$"
    assert latex.escape("Δ −0.18 ± 2 ≠ ✓") == "$\\Delta$ \\textminus{}0.18 \\textpm{} 2 $\\neq$ \\agree{}"
    assert latex.escape("Acurácia 1ª Epoch 中") == "Acurácia 1ª Epoch ?"


def test_numbers_in_the_papers_decimals_and_separators():
    assert table_view.format_number(84.0, 2) == "84.00" and table_view.format_number(746638.0, 0) == "746,638"
    assert table_view.format_number(3736.2, 0) == "3736" and table_view.format_number(None, 2) == pages.MISSING
    assert table_view.format_delta(-0.18, 2) == "−0.18" and table_view.format_delta(0.0001, 2) == "±0.00"
    assert table_view.format_delta(12.5, 1) == "+12.5"


def test_each_distinct_set_of_deviations_gets_its_own_sign(tmp_path):
    (tmp_path / "t.csv").write_text("model,acc\nA,1.0\nB,2.0\nC,3.0\n")
    table = {"file": "t.csv", "metrics": {"acc": "test_top1_pct"},
             "match": {"model": {"A": {"model": "a"}, "B": {"model": "b"}, "C": {"model": "c"}}}}
    summaries = [run_summary.summarize(fake_record("s", "cifar10", m, top1=0.01,
                                                 extra={"speed": {"deviations": d}}))
                 for m, d in (("a", ["bf16 autocast"]), ("b", ["channels_last"]))]
    frame = paper.paper_table(table, "s", summaries, tmp_path / "t.csv")
    frame.to_csv(tmp_path / "out.csv", index=False)
    view = pages.table_view(pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False), table, "t.csv",
                             vd.default_rules())
    marks = [row[1].ours_marks for row in view["body"]]
    assert marks == [["†"], ["‡"], []]  # no sign beside a cell without our number
    assert view["legend"] == [{"mark": "†", "text": "computed with: bf16 autocast"},
                              {"mark": "‡", "text": "computed with: channels_last"}]


def test_with_three_seeds_a_cell_shows_mean_std_n_and_the_interval_in_html_and_latex(raw_config, tmp_path):
    raw_config["min_seeds"] = 3
    config = cfg.validate(raw_config)
    study = "seed001_resnet_mobilenet_cifar10"
    records = {run.id: fake_record(study, "cifar10", run.model, seed=run.seed, top1=(83.0 + run.seed) / 100)
               for run in cfg.expand_runs(config, [study])}
    tables, runs, _ = aggregated(config, tmp_path, records)
    html, tex = tmp_path / "page" / "index.html", tmp_path / "page" / "report.tex"
    pages.render(config, [study], tables, runs, {}, html, tex, REPO)
    cell = section(html.read_text(), "seed001_accuracy_cifar10-csv")
    cell = cell[cell.index("MobileNet"):cell.index("</td>", cell.index("MobileNet"))]
    words = re.sub(r"<[^>]+>", " ", cell).split()
    # Seeds 0, 1, 2 at 83, 84, 85 %: mean 84.00, std 1.000, 95 % interval 84 ± 4.303 / sqrt(3) = [81.516, 86.484].
    assert " ".join(words) == "MobileNet 84.18 84.00 ± 1.000 (n=3) 95 % CI [81.516, 86.484] −0.18 pp ✓"
    assert 'title="agree: the paper&#39;s value is inside our 95 % interval [81.516, 86.484] (3 seeds)"' in \
        html.read_text()
    latex = tex.read_text()
    assert "{\\scriptsize \\textpm{} 1.000 (n=3)}\\\\{\\scriptsize 95 \\% CI [81.516, 86.484]}" in latex
