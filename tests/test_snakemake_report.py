"""Snakemake's own report (`snakemake --report results/report.zip`) after the smoke run: one category per study
holding its paper tables and its figures, each with its caption and labels; and every figure on disk."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from cnnrepro import config as cfg
from cnnrepro.report import figure_plan
from tests.test_e2e import CONFIGFILES, SIXTH, snakemake, working_directory


def figures_of(workdir: Path, config: dict) -> dict[str, list[figure_plan.Figure]]:
    with working_directory(workdir):
        return figure_plan.plan(config, cfg.settings_by_run(config))


@pytest.mark.e2e
def test_every_study_gets_its_figures_as_png_and_pdf(smoke):
    import matplotlib.image as mpimg

    workdir, config, results = smoke
    plan = figures_of(workdir, config)
    assert [f.name for f in plan[SIXTH]] == ["curves-mnist", "f1-mnist", "confusion-mnist", "classes-mnist"]
    for study, planned in plan.items():
        for figure in planned:
            png = results / "report" / "figures" / study / f"{figure.name}.png"
            pdf = png.with_suffix(".pdf")
            assert pdf.read_bytes().startswith(b"%PDF"), pdf
            image = mpimg.imread(png)
            assert image.shape[0] > 200 and image.shape[1] > 300, png
            assert (results / "logs" / "figures" / study / f"{figure.name}.log").exists()


@pytest.fixture(scope="module")
def snakemake_report(smoke, tmp_path_factory):
    """The report zip of the smoke run, unpacked: (results and categories from its page, names in the zip)."""
    workdir, config, results = smoke
    out = tmp_path_factory.mktemp("snakemake_report") / "report.zip"
    result = snakemake(workdir, "--report", str(out), "--configfile", *CONFIGFILES)
    assert result.returncode == 0, result.stderr[-4000:]
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        page = archive.read("report/report.html").decode("utf-8")

    def script_json(name: str):
        # The page keeps its content as JavaScript literals: `var results = {...};`
        found = re.search(rf"var {name} = (\{{.*?\}});\s*\n", page, re.S)
        assert found, f"no `var {name}` in the report page"
        return json.loads(found.group(1))

    return script_json("results"), script_json("categories"), names, (workdir, config, results)


@pytest.mark.e2e
def test_the_snakemake_report_has_one_category_per_study_with_its_tables_and_figures(snakemake_report):
    entries, categories, names, (workdir, config, results) = snakemake_report
    plan = figures_of(workdir, config)
    for study, settings in config["studies"].items():
        assert study in categories, f"no report category for study {study}; categories: {list(categories)}"
        listed = categories[study]
        shown = {Path(path).name for path in listed["figures"]}
        assert shown == {f"{f.name}.png" for f in plan[study]}
        tables = {cfg.paper_table_path(config, table).name for table in settings["tables"]}
        assert {Path(path).name for path in listed.get("tables", [])} == tables
    # Every file listed is in the zip beside the page.
    for path, entry in entries.items():
        assert any(name.endswith(entry["data_uri"]) for name in names), (path, entry["data_uri"])


@pytest.mark.e2e
def test_each_figure_and_table_in_the_snakemake_report_has_its_caption_and_labels(snakemake_report):
    entries, categories, names, (workdir, config, results) = snakemake_report
    with working_directory(workdir):
        for study, planned in figures_of(workdir, config).items():
            for figure in planned:
                path = next(p for p in categories[study]["figures"] if Path(p).name == f"{figure.name}.png")
                entry = entries[path]
                caption = figure_plan.caption(config, figure)
                # docutils renders the caption into HTML; its opening words are there as written.
                assert caption.split(":")[0][:60] in entry["caption"].replace("\n", " "), (figure.name, entry["caption"])
                assert "system-message" not in entry["caption"]
                assert entry["labels"] == figure.report_labels()
    seed003 = categories["seed003_kmnist_fcnn_cnn"]
    table = entries[seed003["tables"][0]]
    assert table["labels"] == {"table": "seed003_table1_f1_test.csv"} and "_paper" in table["caption"]
