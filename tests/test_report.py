import pandas as pd
import pytest

from cnnrepro import config as cfg
from cnnrepro import report
from cnnrepro.aggregate import table_name

PNG = bytes.fromhex("89504e470d0a1a0a")  # a PNG signature is enough: the page only embeds the bytes


def report_inputs(config, root):
    """Every file the report rule hands over: one CSV per paper table, runs.csv, models.csv, one PNG per dataset."""
    (root / "tables").mkdir()
    tables = {}
    for study in config["studies"].values():
        for table in study["tables"]:
            name = table_name(config, table)
            tables[name] = root / "tables" / name
            pd.DataFrame({"model": ["X"], "runs_ours": [0]}).to_csv(tables[name], index=False)
    pd.DataFrame({"study": ["s"], "model": ["m"], "gpu_note": ["not measured: no CUDA device"]}).to_csv(
        root / "tables" / "models.csv", index=False)
    pd.DataFrame({"study": ["s"], "model": ["m"], "test_top1_pct": [50.0]}).to_csv(
        root / "tables" / "runs.csv", index=False)
    plots = {"mnist": root / "data" / "mnist_classes.png"}
    plots["mnist"].parent.mkdir()
    plots["mnist"].write_bytes(PNG)
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


def test_a_paper_table_missing_from_the_inputs_is_an_error_naming_it(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    tables, runs, models, plots = report_inputs(config, tmp_path)
    del tables["seed003_table1_f1_test.csv"]
    with pytest.raises(ValueError, match="seed003_table1_f1_test.csv"):
        report.render(config, tables, runs, models, plots, tmp_path / "index.html", tmp_path / "tables.tex")


def test_latex_escaping():
    assert report._latex_escape("a_b & 5% #1 $x$") == "a\\_b \\& 5\\% \\#1 \\$x\\$"
