"""Report: takes the aggregated tables, runs.csv and the runs' records and gives the figures and the report pages
(HTML, LaTeX, PDF) with provenance."""
