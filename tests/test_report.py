import pandas as pd
import pytest

from cnnrepro import aggregate, report
from cnnrepro import config as cfg
from cnnrepro.aggregate import table_name

PNG = bytes.fromhex("89504e470d0a1a0a")  # a PNG signature is enough: the page only embeds the bytes


def report_inputs(config, root):
    """Every file the report rule hands over: one CSV per paper table (as aggregated without any run),
    runs.csv, models.csv, one PNG per dataset."""
    (root / "tables").mkdir()
    tables = {}
    for name, study in config["studies"].items():
        for table in study["tables"]:
            file = table_name(config, table)
            tables[file] = root / "tables" / file
            aggregate.paper_table(table, name, [], cfg.paper_table_path(config, table)).to_csv(tables[file],
                                                                                               index=False)
    pd.DataFrame({"study": ["s"], "model": ["m"], "gpu_note": ["not measured: no CUDA device"]}).to_csv(
        root / "tables" / "models.csv", index=False)
    pd.DataFrame({"study": ["s"], "model": ["m"], "test_top1_pct": [50.0]}).to_csv(
        root / "tables" / "runs.csv", index=False)
    used = sorted({d for study in config["studies"].values() for d in study["datasets"]})
    plots = {d: root / "data" / f"{d}_classes.png" for d in used}
    plots[used[0]].parent.mkdir()
    for path in plots.values():
        path.write_bytes(PNG)
    return tables, root / "tables" / "runs.csv", root / "tables" / "models.csv", plots


def test_report_renders_tables_with_dashes_for_missing_cells(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    tables, runs, models, plots = report_inputs(config, tmp_path)
    pd.DataFrame({"model": ["MobileNet", "ResNet"], "test_acc_pct_paper": ["84.10", "83.68"],
                  "test_acc_pct_ours": [81.254321, None], "runs_ours": [1, 0]}).to_csv(
        tables["seed001_accuracy_cifar10.csv"], index=False)
    html, tex = tmp_path / "report" / "index.html", tmp_path / "report" / "tables.tex"
    report.render(config, tables, runs, models, plots, html, tex)
    page = html.read_text()
    for name, study in config["studies"].items():
        assert name in page and study["title"] in page
    assert ">84.10<" in page  # printed digits kept, trailing zero included
    assert ">81.25<" in page and report.MISSING in page
    assert "not measured: no CUDA device" in page
    assert 'alt="class distribution of mnist"' in page and "data:image/png;base64,iVBORw0KGgo" in page
    assert f"from <code>{tmp_path / 'report'}</code>" in page  # the page's own folder, not a results root
    latex = tex.read_text()
    assert "\\begin{tabular}{lrrr}" in latex and "test\\_acc\\_pct\\_ours" in latex and "--" in latex
    assert latex.strip().endswith("\\end{document}")


@pytest.mark.parametrize("inputs, name, words", [
    ("tables", "seed003_table1_f1_test.csv", "seed003_table1_f1_test.csv"),
    ("plots", "kmnist", "class_plots covers datasets cifar10, cifar100, mnist; expected .*kmnist"),
])
def test_a_missing_input_is_an_error_naming_it(raw_config, tmp_path, inputs, name, words):
    config = cfg.validate(raw_config)
    tables, runs, models, plots = report_inputs(config, tmp_path)
    del {"tables": tables, "plots": plots}[inputs][name]
    with pytest.raises(ValueError, match=words):
        report.render(config, tables, runs, models, plots, tmp_path / "index.html", tmp_path / "tables.tex")


def test_latex_escaping():
    assert report._latex_escape("a_b & 5% #1 $x$") == "a\\_b \\& 5\\% \\#1 \\$x\\$"


def test_the_real_configs_notes_are_printed_with_the_tables(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    tables, runs, models, plots = report_inputs(config, tmp_path)
    html, tex = tmp_path / "index.html", tmp_path / "tables.tex"
    report.render(config, tables, runs, models, plots, html, tex)
    page, latex = html.read_text(), tex.read_text()
    fino = "Undefined in the report (&#34;Acurácia Conjunto de Teste Fino&#34;)"
    assert f'<p class="note"><sup class="mark">1</sup> {fino}' in page
    assert ">95.03<sup class=\"mark\">1</sup></td>" in page  # the Fino column's paper cells carry the mark
    assert "\\textsuperscript{1}~Undefined in the report (\"Acurácia Conjunto de Teste Fino\")" in latex
    assert "MB = MiB (bytes / 2\\textasciicircum{}20) in the paper's CIFAR-100 tables." in latex
    assert ">device_ours</th>" in page and "device\\_ours" in latex
    assert ">notes</th>" not in page  # the marks and the texts under the table stand for the CSV's notes column


def test_notes_of_each_kind_and_deviations_are_marked_in_html_and_latex(raw_config, tmp_path):
    from tests.test_aggregate import fake_record

    table = raw_config["studies"]["seed001_resnet_mobilenet_cifar10"]["tables"][0]
    table["notes"] = [{"text": "the whole table"},                                        # [1]
                      {"metric": "test_acc_pct", "text": "the accuracy column"},          # [2]
                      {"row": {"model": "ResNet"}, "text": "the ResNet row"},             # [3]
                      {"metric": "test_acc_pct", "row": {"model": "MobileNet"},           # [4]
                       "text": "one cell: 100% of #1_x & {y} ~ ^"}]
    config = cfg.validate(raw_config)
    tables, runs, models, plots = report_inputs(config, tmp_path)
    study = "seed001_resnet_mobilenet_cifar10"
    deviating = fake_record(study, "cifar10", "mobilenet", top1=0.8123,
                            extra={"device_name": "NVIDIA A100", "speed": {"deviations": ["bf16 autocast", "TF32 matmul"]}})
    faithful = fake_record(study, "cifar10", "resnet18_cifar", top1=0.7777,
                           extra={"device_name": "NVIDIA A100", "speed": {"deviations": []}})
    frame = aggregate.paper_table(table, study, [aggregate.summarize(deviating), aggregate.summarize(faithful)],
                                  cfg.paper_table_path(config, table))
    frame.to_csv(tables["seed001_accuracy_cifar10.csv"], index=False)
    assert frame["deviations_ours"].tolist() == ["bf16 autocast, TF32 matmul", ""]
    html, tex = tmp_path / "index.html", tmp_path / "tables.tex"
    report.render(config, tables, runs, models, plots, html, tex)

    page = html.read_text()
    section = page[page.index('<h3>seed001_accuracy_cifar10.csv'):]
    section = section[:section.index("</section>")]
    assert section.startswith('<h3>seed001_accuracy_cifar10.csv<sup class="mark">1</sup></h3>')  # the table
    mobilenet, resnet = (row.split("</tr>")[0] for row in section.split("<tr>") if "NVIDIA" in row)
    assert '<td class="">MobileNet</td>' in mobilenet  # no row note
    assert '<td class="">ResNet<sup class="mark">3</sup></td>' in resnet  # the row
    assert '<td class="paper">84.18<sup class="mark">2,4</sup></td>' in mobilenet  # column + cell
    assert '<td class="ours">81.23<sup class="mark">2,4,†</sup></td>' in mobilenet  # ... and the deviation
    assert '<td class="paper">83.68<sup class="mark">2</sup></td>' in resnet
    assert '<td class="ours">77.77<sup class="mark">2</sup></td>' in resnet and "†" not in resnet  # faithful
    assert '<td class="ours">NVIDIA A100</td>' in mobilenet and '<td class="ours">NVIDIA A100</td>' in resnet
    for mark, text in (("1", "the whole table"), ("2", "the accuracy column"), ("3", "the ResNet row"),
                       ("4", "one cell: 100% of #1_x &amp; {y} ~ ^"),
                       ("†", "computed with: bf16 autocast, TF32 matmul")):
        assert f'<sup class="mark">{mark}</sup> {text}</p>' in section
    assert section.count("computed with") == 1

    latex = tex.read_text()
    section = latex[latex.index("\\section*{ResNet vs MobileNet"):]
    section = section[:section.index("\\end{table}")]
    mobilenet, resnet = (line for line in section.splitlines() if line.startswith(("MobileNet", "ResNet")))
    assert mobilenet.startswith("MobileNet & aproximadamente & 84.18\\textsuperscript{2,4} & "
                                "81.23\\textsuperscript{2,4,\\dag{}} & 1 & NVIDIA A100 & bf16 autocast, TF32 matmul")
    assert resnet.startswith("ResNet\\textsuperscript{3} & cerca de & 83.68\\textsuperscript{2} & "
                             "77.77\\textsuperscript{2} & 1 & NVIDIA A100 & --")
    assert "\\dag" not in resnet
    assert "\\textsuperscript{4}~one cell: 100\\% of \\#1\\_x \\& \\{y\\} \\textasciitilde{} \\textasciicircum{}\\par" in section
    assert "\\textsuperscript{\\dag{}}~computed with: bf16 autocast, TF32 matmul\\par" in section
    assert "\\caption{seed001\\_accuracy\\_cifar10.csv\\textsuperscript{1} (" in section


def test_each_distinct_set_of_deviations_gets_its_own_sign():
    frame = pd.DataFrame({"model": ["A", "B", "C"], "acc_paper": ["1", "2", "3"], "acc_ours": ["1.5", "2.5", ""],
                          "runs_ours": ["1", "1", "0"], "device_ours": ["g", "g", ""],
                          "deviations_ours": ["bf16 autocast", "channels_last", "bf16 autocast"], "notes": ""})
    view = report.paper_table_view(frame, {"metrics": {"acc": "test_top1_pct"}}, "t.csv")
    assert [row[2]["marks"] for row in view["rows"]] == [["†"], ["‡"], []]  # no sign beside a dash
    assert view["legend"] == [{"mark": "†", "text": "computed with: bf16 autocast"},
                              {"mark": "‡", "text": "computed with: channels_last"}]
    assert view["columns"][-1] == "deviations_ours"
