import pandas as pd

from cnnrepro import config as cfg
from cnnrepro import report


def test_report_renders_tables_with_dashes_for_missing_cells(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"model": ["MobileNet", "ResNet"], "test_acc_pct_paper": ["84.10", "83.68"],
                  "test_acc_pct_ours": [81.254321, None], "runs_ours": [1, 0]}).to_csv(
        tables / "seed001_accuracy_cifar10.csv", index=False)
    pd.DataFrame({"study": ["s"], "model": ["m"], "gpu_note": ["not measured: no CUDA device"]}).to_csv(
        tables / "models.csv", index=False)
    html, tex = tmp_path / "report" / "index.html", tmp_path / "report" / "tables.tex"
    report.render(config, tmp_path, html, tex)
    page = html.read_text()
    for name, study in config["studies"].items():
        assert name in page and study["title"] in page
    assert ">84.10<" in page  # printed digits kept, trailing zero included
    assert ">81.25<" in page and report.MISSING in page
    assert "not measured: no CUDA device" in page
    latex = tex.read_text()
    assert "\\begin{tabular}{lrrr}" in latex and "test\\_acc\\_pct\\_ours" in latex and "--" in latex
    assert latex.strip().endswith("\\end{document}")


def test_latex_escaping():
    assert report._latex_escape("a_b & 5% #1 $x$") == "a\\_b \\& 5\\% \\#1 \\$x\\$"
