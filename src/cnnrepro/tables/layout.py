"""A paper table's shape: which CSV columns are keys and which are numbers, the columns its output adds, how the
paper printed it (rows, columns, the spreads printed after their mean) and where its notes go."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnrepro import config as cfg
from cnnrepro.tables.select import same

# What a paper table's output adds after its key and metric columns.
EXTRA_COLUMNS = ("runs_ours", "status_ours", "device_ours", "deviations_ours", "notes")
# Per metric column m: m_paper (as printed), then our mean, std, count and 95 % interval, the verdict and its reason.
METRIC_SUFFIXES = ("_paper", "_ours", "_ours_std", "_ours_n", "_ours_ci95_low", "_ours_ci95_high", "_verdict",
                   "_reason")


def split_columns(table: dict, columns: list[str]) -> tuple[list[str], list[str]]:
    """(metric columns, key columns) of a paper CSV with these columns."""
    # A shared metrics map may name columns this particular table does not print.
    metric_cols = [m for m in table["metrics"] if m in columns]
    return metric_cols, [c for c in columns if c not in metric_cols]


def table_name(config: dict, table: dict) -> str:
    """A paper table's name: its CSV's file name, which is also its output's (tables/<name>)."""
    return cfg.paper_table_path(config, table).name


def configured_tables(config: dict) -> list[tuple[str, dict]]:
    """(study, table entry) of every paper table in the config."""
    return [(study, table) for study, spec in config["studies"].items() for table in spec["tables"]]


def study_tables(config: dict, study: str) -> list[str]:
    """The names of ``study``'s paper tables, in config order."""
    return [table_name(config, table) for table in config["studies"][study]["tables"]]


# --- layout: how the paper printed a table (studies.<name>.tables[i].layout; defaults in the schema) ---

METRIC_DIM = "metric"  # the layout dimension of the metric columns


def layout_dims(table: dict, key_cols: list[str], records: list[dict]) -> tuple[list[str], list[str]]:
    """(row dimensions, column dimensions) of a table as printed: ``layout.rows`` (null: the key columns whose
    value varies, other than the column dimensions) and ``layout.columns``."""
    layout = table.get("layout") or {}
    columns = list(layout.get("columns") or [METRIC_DIM])
    rows = layout.get("rows")
    if rows is None:
        rows = [c for c in key_cols if c not in columns and len({str(r[c]) for r in records}) > 1]
    return list(rows), columns


def shown_metrics(table: dict, metric_cols: list[str]) -> list[str]:
    """The metric columns printed as cells of their own: not the spreads printed after their mean (``± x``)."""
    spreads = {spread for mean, spread in ((table.get("layout") or {}).get("plus_minus") or {}).items()
               if mean in metric_cols}
    return [m for m in metric_cols if m not in spreads]


@dataclass
class Notes:
    """Where a table's notes go. Note ``n`` is ``texts[n - 1]``; each list holds note numbers."""

    texts: list[str] = field(default_factory=list)
    table: list[int] = field(default_factory=list)  # on the whole table
    rows: list[list[int]] = field(default_factory=list)  # per row: on the row
    cells: list[dict[str, list[int]]] = field(default_factory=list)  # per row: metric column -> on that cell

    def of_row(self, i: int) -> list[int]:
        """Every note that applies to row ``i`` or one of its cells."""
        return sorted({*self.table, *self.rows[i], *(n for numbers in self.cells[i].values() for n in numbers)})

    def describe(self, i: int) -> str:
        """Row ``i``'s notes as the output CSV holds them: ``[1] text; [2] text``."""
        return "; ".join(f"[{n}] {self.texts[n - 1]}" for n in self.of_row(i))


def _add(numbers: list[int], number: int) -> None:
    if number not in numbers:
        numbers.append(number)


def place_notes(table: dict, name: str, key_columns: list[str], metric_columns: list[str], rows: list[dict],
                require_rows: bool = True, field: str | None = None) -> Notes:
    """Number a table's ``notes`` (in config order; one text, one number) and place each on the table, the
    cells of a metric column, the rows its ``row`` selects, or those rows' cells of its metric.

    ``row`` maps key columns to printed values (all must match); ``metric`` is a metric column or a list
    of them. A column the table does not have is an error naming the table and the column, and so is a
    ``row`` that selects no row (unless ``require_rows`` is off). ``field``, the table entry's config path,
    starts the message with the note's path.
    """
    notes = Notes(rows=[[] for _ in rows], cells=[{} for _ in rows])
    for j, note in enumerate(table.get("notes") or []):
        where = f"paper table {name}, notes[{j}]"
        if field is not None:
            where = f"at '{field}.notes[{j}]': {where}"
        metrics = note.get("metric")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        for metric in metrics:
            if metric not in metric_columns:
                raise ValueError(f"{where}: metric '{metric}' is not a metric column of {name}; its metric "
                                 f"columns (in the CSV and under metrics): {', '.join(metric_columns) or 'none'}")
        selector = note.get("row") or {}
        for column in selector:
            if column not in key_columns:
                raise ValueError(f"{where}: row column '{column}' is not a key column of {name}; its key "
                                 f"columns: {', '.join(key_columns) or 'none'}")
        selected = [i for i, row in enumerate(rows)
                    if all(same(row[column], value) for column, value in selector.items())]
        if selector and not selected and require_rows:
            wanted = ", ".join(f"{column}={value}" for column, value in selector.items())
            raise ValueError(f"{where}: row {{{wanted}}} selects no row of {name}; a row note matches the "
                             "printed values of key columns")
        if note["text"] not in notes.texts:
            notes.texts.append(note["text"])
        number = notes.texts.index(note["text"]) + 1
        if not selector and not metrics:  # the whole table
            _add(notes.table, number)
        elif not metrics:  # the rows it selects
            for i in selected:
                _add(notes.rows[i], number)
        else:  # the metric's cells, in the rows it selects or in every row
            for i in selected if selector else range(len(rows)):
                for metric in metrics:
                    _add(notes.cells[i].setdefault(metric, []), number)
    return notes
