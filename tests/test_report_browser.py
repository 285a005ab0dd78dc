"""The HTML report in a real browser (Debian's headless Chromium): no console errors, no sideways scrolling at
1366 px, the runs table sorts, and a screenshot of the expected size. tests/test_e2e.py runs the same check on the
smoke run's report."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cnnrepro import config as cfg

WIDTH = 1366
# Measures the page after its own script ran: how wide it is, which paper tables stick out, whether a click on a
# runs table's header sorts it. Written into <body> attributes that --dump-dom prints.
PROBE = """<script>
(function () {
  var body = document.body, width = document.documentElement.clientWidth;
  body.setAttribute("data-client-width", width);
  body.setAttribute("data-scroll-width", document.documentElement.scrollWidth);
  var wide = [];
  document.querySelectorAll("table.grid").forEach(function (t) {
    if (t.getBoundingClientRect().right > width + 0.5) { wide.push(t.previousElementSibling.previousElementSibling.id); }
  });
  body.setAttribute("data-wide-tables", wide.join(" "));
  body.setAttribute("data-grid-tables", document.querySelectorAll("table.grid:not(.assumed)").length);
  body.setAttribute("data-assumption-tables", document.querySelectorAll("table.grid.assumed").length);
  var th = document.querySelector("table.runs thead th");
  if (th) { th.click(); body.setAttribute("data-sorted", th.getAttribute("aria-sort")); }
})();
</script>"""


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser checks need it")
    return binary


def run_chromium(binary: str, url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", "--disable-background-networking",
                           f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=180)


def check_in_browser(html: Path, tmp_path: Path, height: int = 900) -> dict:
    """Open ``html`` as a reader would, at 1366 px: returns what the page measured and the screenshot's path;
    fails on a console message (the page logs nothing, so any is an error) or a page wider than the window."""
    from PIL import Image

    binary = chromium()
    shot = tmp_path / f"{html.parent.name}-{html.stem}.png"
    result = run_chromium(binary, html.resolve().as_uri(), tmp_path, "--enable-logging=stderr", "--v=0",
                          f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "\n".join(console)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        size = image.size
        colours = sum(1 for count in image.convert("L").resize((64, 64)).histogram() if count)
    assert size == (WIDTH, height)
    assert colours > 8, "the screenshot is blank"  # text, tables and colours, not an empty page
    probe = tmp_path / f"{html.parent.name}-probe.html"
    probe.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    dom = run_chromium(binary, probe.resolve().as_uri(), tmp_path, f"--window-size={WIDTH},{height}",
                       "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    measured = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert int(measured["scroll-width"]) <= int(measured["client-width"]), measured
    assert measured["wide-tables"] == "", f"paper tables wider than {WIDTH} px: {measured['wide-tables']}"
    return {"screenshot": shot, **measured}


@pytest.mark.slow
def test_the_full_report_reads_at_1366_px_without_errors(raw_config, tmp_path):
    from tests.test_report import render_all

    config = cfg.validate(cfg.deep_merge(raw_config, cfg.load_yaml(Path("tests/data/sixth_study.yaml"))))
    render_all(config, tmp_path / "out")
    measured = check_in_browser(tmp_path / "out" / "report" / "index.html", tmp_path)
    tables = sum(len(study["tables"]) for study in config["studies"].values())
    assert int(measured["grid-tables"]) == tables
    declaring = sum(1 for study in config["studies"].values() if study.get("assumptions"))
    assert declaring and int(measured["assumption-tables"]) == declaring  # one unstated-settings table per study
    assert measured["sorted"] == "ascending"  # the runs table's script ran
