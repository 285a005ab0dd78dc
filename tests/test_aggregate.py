from pathlib import Path

import pandas as pd
import pytest

from cnnrepro import config as cfg
from cnnrepro import startup
from cnnrepro.runtime import io
from cnnrepro.tables import aggregate, layout, paper, specs
from cnnrepro.tables import summary as run_summary

REPO = Path(__file__).resolve().parents[1]


def fake_record(study, dataset, model, freeze="none", variant="base", seed=0, top1=0.5, extra=None, **settings):
    f1 = [0.1 * i for i in range(10)]
    return {
        "status": "ok",
        "run_id": cfg.Run(study, dataset, model, freeze, variant, seed).id,
        "settings": {"study": study, "dataset": dataset, "model": model, "freeze": freeze, "variant": variant,
                     "seed": seed, "augment": settings.pop("augment", "none"),
                     "recipe": settings.pop("recipe", {}), "input": {}, "size_unit": settings.pop("size_unit", "MiB"),
                     "grid": settings.pop("grid", {})},
        "test": {"top1": top1, "loss": 1.0, "macro_f1": sum(f1) / 10, "f1_per_class": f1, "top5": 0.9},
        "eval": {"loss": 0.5, "acc": top1}, "train_loss_first": 2.0, "train_loss_last": 0.25, "train_acc_last": 0.8,
        "train_seconds": 10.0, "params_total": 1234, "params_trainable": 34, "epochs_run": 3, **(extra or {}),
    }


def bench_cpu():
    return {"measured": True, "size": {"checkpoint_MiB": 3.0, "checkpoint_MB_1024000": 3.07, "state_dict_MiB": 2.9},
            "flops": {"flops_forward": 1e6}, "latency_paper": {"mean_ms": 5.0, "std_ms": 0.5},
            "latency_correct": {"median_ms": 4.0}, "device": {"device_name": "cpu model"}}


def bench_record(study, dataset, model, freeze, kind):
    """What benchmark_job writes: bench's record (which says its device kind) plus the run fields."""
    record = bench_cpu() if kind == "cpu" else {"measured": False, "reason": "not measured: no CUDA device"}
    return {**record, "device_kind": kind, "study": study, "dataset": dataset, "model": model, "freeze": freeze}


def write_inputs(config, root, records=None):
    """One metrics file per configured run and one record per configured benchmark, at paths unlike the
    workflow's: the package must identify each file by its content. ``records`` replaces some runs' record."""
    metrics, bench = [], []
    for i, run in enumerate(cfg.expand_runs(config)):
        grid = dict(cfg.variants(config["studies"][run.study]))[run.variant]
        record = (records or {}).get(run.id) or fake_record(run.study, run.dataset, run.model, run.freeze,
                                                            run.variant, run.seed, grid=grid)
        metrics.append(root / "metrics" / f"{i}.json")
        io.write_json(metrics[-1], record)
    for i, key in enumerate(run_summary.benchmarks(config)):
        bench.append(root / "bench" / f"{i}.json")
        io.write_json(bench[-1], bench_record(*key))
    return metrics, bench


def table_files(config, out_dir):
    """(table name -> paper CSV, table name -> output CSV), as the aggregate rule passes them."""
    tables = [t for s in config["studies"].values() for t in s["tables"]]
    paper = {cfg.paper_table_path(config, t).name: cfg.paper_table_path(config, t) for t in tables}
    return paper, {name: out_dir / "tables" / name for name in paper}


def run_aggregate(config, root, metrics, bench):
    paper, out = table_files(config, root / "out")
    return aggregate.aggregate(config, metrics, bench, paper, out, root / "out" / "runs.csv",
                               root / "out" / "models.csv")


def test_summary_picks_the_papers_size_unit():
    c10 = run_summary.summarize(fake_record("s", "cifar10", "m", size_unit="MB_1024000"), bench_cpu(),
                              {"measured": False, "reason": "not measured: no CUDA device"})
    c100 = run_summary.summarize(fake_record("s", "cifar100", "m", size_unit="MiB"), bench_cpu(), None)
    assert c10["size_MB_paper_unit"] == 3.07 and c100["size_MB_paper_unit"] == 3.0
    assert c10["gpu_not_measured"] == "not measured: no CUDA device" and "gpu_time_ms_mean" not in c10
    assert c10["test_f1_by_class"]["macro avg"] == pytest.approx(0.45)


def test_paper_table_keeps_printed_digits_and_means_over_seeds(tmp_path):
    (tmp_path / "t.csv").write_text("model,dataset,acc_pct,loss\nA,CIFAR-10,89.10,0.2100\nB,CIFAR-10,70.00,1.0\n")
    table = {"file": "t.csv", "match": {"model": {"A": {"model": "a"}, "B": {"model": "b"}},
                                        "dataset": {"CIFAR-10": {"dataset": "cifar10"}}},
             "metrics": {"acc_pct": "test_top1_pct", "loss": "train_loss_last", "missing_col": "x"}}
    summaries = [run_summary.summarize(fake_record("s", "cifar10", "a", seed=s, top1=t)) for s, t in ((0, .5), (1, .7))]
    frame = paper.paper_table(table, "s", summaries, tmp_path / "t.csv")
    per_metric = ["paper", "ours", "ours_std", "ours_n", "ours_ci95_low", "ours_ci95_high", "verdict", "reason"]
    assert list(frame.columns) == ["model", "dataset", *(f"acc_pct_{c}" for c in per_metric),
                                   *(f"loss_{c}" for c in per_metric),
                                   "runs_ours", "status_ours", "device_ours", "deviations_ours", "notes"]
    a, b = frame.to_dict("records")
    assert a["acc_pct_paper"] == "89.10" and a["loss_paper"] == "0.2100"
    assert a["acc_pct_ours"] == pytest.approx(60.0) and a["runs_ours"] == 2 and a["status_ours"] == "ok"
    # Two seeds, 50 and 70: sample std 14.1421, 95 % interval 60 ± 12.706 * 14.1421 / sqrt(2).
    assert a["acc_pct_ours_std"] == pytest.approx(14.1421) and a["acc_pct_ours_n"] == 2
    assert a["acc_pct_ours_ci95_low"] == pytest.approx(60 - 127.06, abs=1e-3)
    assert a["acc_pct_ours_ci95_high"] == pytest.approx(60 + 127.06, abs=1e-3)
    # Fewer than 3 seeds: the tolerance decides (|60 - 89.10| > 1.5 pp); the loss is within 10 % of 0.21? No.
    assert a["acc_pct_verdict"] == "differ" and "±1.5 pp" in a["acc_pct_reason"]
    assert a["loss_verdict"] == "differ" and a["loss_reason"] == "outside ±10 %"
    assert pd.isna(b["acc_pct_ours"]) and b["runs_ours"] == 0 and b["acc_pct_ours_n"] == 0
    assert b["acc_pct_verdict"] == "not comparable" and b["acc_pct_reason"] == "no configured run matches this row"


def test_match_by_run_field_and_templates(tmp_path):
    (tmp_path / "t.csv").write_text("level,batch_size,epochs,class,f1\nall,500,300,3,0.9\nall,250,300,macro avg,0.8\n")
    table = {"file": "t.csv", "match": {"level": {"all": {"freeze": "none"}}, "batch_size": "recipe.batch_size",
                                        "epochs": "recipe.epochs"},
             "metrics": {"f1": "test_f1_by_class.{class}"}}
    # A limit capped the epochs that ran to 1; rows still select by the configured grid value.
    runs = [run_summary.summarize(fake_record("s", "cifar10", "m", recipe={"batch_size": bs, "epochs": 1},
                                            grid={"recipe.batch_size": bs, "recipe.epochs": 300}))
            for bs in (250, 500)]
    frame = paper.paper_table(table, "s", runs, tmp_path / "t.csv")
    assert frame["f1_ours"].tolist() == [pytest.approx(0.3), pytest.approx(0.45)]
    assert frame["runs_ours"].tolist() == [1, 1]


def test_every_configured_table_is_written_with_paper_columns(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    seed001 = "seed001_resnet_mobilenet_cifar10/cifar10/{}/none/base/seed0"
    records = {seed001.format("mobilenet"): fake_record(*seed001.format("mobilenet").split("/")[:4], top1=0.8418),
               seed001.format("resnet18_cifar"): {
                   "status": "diverged", "run_id": seed001.format("resnet18_cifar"), "epochs_run": 2,
                   "settings": fake_record(*seed001.format("resnet18_cifar").split("/")[:4])["settings"]}}
    written = run_aggregate(config, tmp_path, *write_inputs(config, tmp_path, records))
    files = {t["file"] for s in config["studies"].values() for t in s["tables"]}
    assert files | {"runs.csv", "models.csv"} == set(written)
    assert written["runs.csv"] == tmp_path / "out" / "runs.csv"
    for name in files:
        frame = pd.read_csv(written[name], dtype=str, keep_default_na=False)
        paper_cols = [c for c in frame.columns if c.endswith("_paper")]
        assert paper_cols and all(frame[c].ne("").any() for c in paper_cols if "top5" not in c)
    seed001 = pd.read_csv(written["seed001_accuracy_cifar10.csv"])
    assert seed001.set_index("model").loc["MobileNet", "test_acc_pct_ours"] == pytest.approx(84.18)
    assert pd.isna(seed001.set_index("model").loc["ResNet", "test_acc_pct_ours"])  # diverged: no numbers
    seed002 = pd.read_csv(written["seed002_table1_squeezenet.csv"])
    assert "params_count_ours" in seed002 and "params_count_paper" in seed002
    assert (seed002["cpu_time_ms_mean_ours"] == 5.0).all()  # each benchmark found by its content
    assert len(pd.read_csv(written["runs.csv"])) == len(cfg.expand_runs(config))


def test_a_configured_run_without_metrics_is_an_error_naming_it(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    metrics, bench = write_inputs(config, tmp_path)
    missing = cfg.expand_runs(config)[3].id
    with pytest.raises(ValueError, match=f"no metrics file among the inputs for run {missing}"):
        run_aggregate(config, tmp_path, metrics[:3] + metrics[4:], bench)


def test_a_metrics_file_of_an_unknown_run_is_an_error_naming_the_file(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    metrics, bench = write_inputs(config, tmp_path)
    stray = tmp_path / "stray" / "metrics.json"
    io.write_json(stray, fake_record("seed001_resnet_mobilenet_cifar10", "cifar10", "vgg19"))
    with pytest.raises(ValueError, match=f"{stray}.*seed001_resnet_mobilenet_cifar10/cifar10/vgg19/none/base/seed0"
                                         ".*config does not define"):
        run_aggregate(config, tmp_path, [*metrics, stray], bench)


def test_a_configured_benchmark_without_its_record_is_an_error(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    metrics, bench = write_inputs(config, tmp_path)
    study, dataset, model, freeze, kind = run_summary.benchmarks(config)[0]
    with pytest.raises(ValueError, match=f"benchmark {study}/{dataset}/{model}/{freeze} \\({kind}\\)"):
        run_aggregate(config, tmp_path, metrics, bench[1:])


def test_a_table_file_may_be_a_path_outside_paper_tables(raw_config, tmp_path):
    # The sixth study of the end-to-end test: its table is tests/data/paper_tables/tiny_table.csv (relative).
    config = cfg.validate(cfg.deep_merge(raw_config, cfg.load_yaml(REPO / "tests" / "data" / "sixth_study.yaml")))
    # And one more, by absolute path.
    mine = tmp_path / "elsewhere" / "mine.csv"
    mine.parent.mkdir()
    mine.write_text("model,acc\nCNN,99.0\n")
    config["studies"]["tiny_mnist_fcnn_vs_cnn"]["tables"].append(
        {"file": str(mine), "match": {"model": {"CNN": {"model": "cnn"}}}, "metrics": {"acc": "test_top1_pct"}})
    cfg.check_semantics(config)
    written = run_aggregate(config, tmp_path, *write_inputs(config, tmp_path))
    assert written["tiny_table.csv"] == tmp_path / "out" / "tables" / "tiny_table.csv"
    tiny = pd.read_csv(written["tiny_table.csv"], dtype=str, keep_default_na=False).set_index("model")
    assert tiny.loc["FCNN", "test_acc_pct_paper"] == "97.80" and tiny.loc["CNN", "runs_ours"] == "1"
    assert float(tiny.loc["CNN", "test_acc_pct_ours"]) == pytest.approx(50.0)
    assert pd.read_csv(written["mine.csv"])["acc_ours"].tolist() == [pytest.approx(50.0)]


def test_two_tables_with_one_file_name_are_a_config_error_naming_both(raw_config, tmp_path):
    copy = tmp_path / "mine" / "seed001_accuracy_cifar10.csv"
    copy.parent.mkdir()
    copy.write_text((REPO / "paper_tables" / "seed001_accuracy_cifar10.csv").read_text())
    raw_config["studies"]["seed003_kmnist_fcnn_cnn"]["tables"].append(
        {"file": str(copy), "metrics": {"test_acc_pct": "test_top1_pct"}})
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(raw_config)
    message = str(error.value)
    assert "studies.seed003_kmnist_fcnn_cnn.tables[1].file" in message
    assert "studies.seed001_resnet_mobilenet_cifar10.tables[0].file" in message
    assert "tables/seed001_accuracy_cifar10.csv" in message


def test_diverged_runs_are_listed_without_numbers():
    record = {"status": "diverged", "settings": fake_record("s", "cifar10", "m")["settings"], "epochs_run": 2}
    summary = run_summary.summarize(record)
    assert summary["status"] == "diverged" and "test_top1_pct" not in summary
    frame = aggregate.model_comparison([summary])
    assert len(frame) == 1 and pd.isna(frame.loc[0, "test_top1_pct"])


# ----- notes, devices and deviations: every deviation labelled where the number is shown -----

NOTES_CSV = "model,dataset,acc,size\nA,CIFAR-10,89.10,2.99\nA,CIFAR-100,70.00,3.10\nB,CIFAR-10,80.00,1.08\n"


def notes_table(*notes, **extra):
    return {"file": "t.csv", "match": {"model": {"A": {"model": "a"}, "B": {"model": "b"}},
                                       "dataset": {"CIFAR-10": {"dataset": "cifar10"},
                                                   "CIFAR-100": {"dataset": "cifar100"}}},
            "metrics": {"acc": "test_top1_pct", "size": "size_MB_paper_unit"}, "notes": list(notes), **extra}


def test_notes_of_each_kind_land_on_their_rows_and_cells(tmp_path):
    (tmp_path / "t.csv").write_text(NOTES_CSV)
    table = notes_table({"text": "on the table"},
                        {"metric": "acc", "text": "on the acc column"},
                        {"row": {"model": "B"}, "text": "on row B"},
                        {"metric": ["size"], "row": {"model": "A", "dataset": "CIFAR-100"}, "text": "on one cell"},
                        {"metric": "size", "row": {"dataset": "CIFAR-10"}, "text": "on the acc column"})
    frame = paper.paper_table(table, "s", [], tmp_path / "t.csv")
    assert list(frame.columns)[-5:] == ["runs_ours", "status_ours", "device_ours", "deviations_ours", "notes"]
    assert frame["notes"].tolist() == [
        "[1] on the table; [2] on the acc column",  # the repeated text keeps its number
        "[1] on the table; [2] on the acc column; [4] on one cell",
        "[1] on the table; [2] on the acc column; [3] on row B",
    ]
    rows = frame.to_dict("records")
    notes = layout.place_notes(table, "t.csv", ["model", "dataset"], ["acc", "size"], rows)
    assert notes.texts == ["on the table", "on the acc column", "on row B", "on one cell"]
    assert notes.table == [1]
    assert notes.rows == [[], [], [3]]
    assert notes.cells == [{"acc": [2], "size": [2]}, {"acc": [2], "size": [4]}, {"acc": [2], "size": [2]}]
    # The numbers themselves are untouched by notes.
    assert frame["acc_paper"].tolist() == ["89.10", "70.00", "80.00"] and frame["acc_ours"].isna().all()


@pytest.mark.parametrize("note, words", [
    ({"metric": "top5", "text": "x"}, "t.csv.*metric 'top5' is not a metric column of t.csv.*acc, size"),
    ({"metric": "model", "text": "x"}, "metric 'model' is not a metric column"),  # a key column
    ({"metric": ["acc", "nope"], "text": "x"}, "metric 'nope'"),
    ({"row": {"modell": "A"}, "text": "x"}, "t.csv.*row column 'modell' is not a key column of t.csv.*model, dataset"),
    ({"row": {"acc": "89.10"}, "metric": "size", "text": "x"}, "row column 'acc' is not a key column"),
    ({"row": {"model": "C"}, "text": "x"}, "t.csv.*row \\{model=C\\} selects no row"),
])
def test_a_note_naming_a_column_the_table_does_not_have_is_an_error(tmp_path, note, words):
    (tmp_path / "t.csv").write_text(NOTES_CSV)
    with pytest.raises(ValueError, match=words):
        paper.paper_table(notes_table(note), "s", [], tmp_path / "t.csv")


def test_a_bad_note_in_the_config_fails_the_config_check_and_aggregation(raw_config, tmp_path):
    raw_config["studies"]["seed001_resnet_mobilenet_cifar10"]["tables"][0]["notes"] = [
        {"metric": "top1_acc_pct", "text": "x"}]
    with pytest.raises(cfg.ConfigError, match="seed001_accuracy_cifar10.csv.*'top1_acc_pct'"):
        startup.check(raw_config)  # before any job starts (the schema's defaults are filled by then)
    # Aggregation checks again, before it reads any input, for a config that did not go through the start-up.
    with pytest.raises(ValueError, match="seed001_accuracy_cifar10.csv.*'top1_acc_pct'"):
        specs.check_paper_tables(raw_config)
    with pytest.raises(ValueError, match="seed001_accuracy_cifar10.csv.*'top1_acc_pct'"):
        run_aggregate(raw_config, tmp_path, [], [])


def speed(*deviations, device="NVIDIA A100"):
    return {"device_name": device, "speed": {"deviations": list(deviations)}}


def test_device_and_deviations_of_the_matching_runs(tmp_path):
    (tmp_path / "t.csv").write_text(NOTES_CSV)
    records = [fake_record("s", "cifar10", "a", seed=0, extra=speed("bf16 autocast", "channels_last")),
               fake_record("s", "cifar10", "a", seed=1, extra=speed("bf16 autocast", "TF32 matmul",
                                                                       device="NVIDIA H100")),
               fake_record("s", "cifar100", "a", extra=speed()),  # faithful
               fake_record("s", "cifar10", "b")]  # an old record: no device name, no speed block
    summaries = [run_summary.summarize(r) for r in records]
    assert summaries[0]["deviations"] == ["bf16 autocast", "channels_last"] and summaries[3]["deviations"] == []
    frame = paper.paper_table(notes_table(metrics={"acc": "test_top1_pct"}), "s", summaries,
                                  tmp_path / "t.csv")
    assert list(frame.columns) == ["model", "dataset", "size", *(f"acc{suffix}" for suffix in layout.METRIC_SUFFIXES),
                                   "runs_ours", "status_ours", "device_ours", "deviations_ours", "notes"]
    assert frame["device_ours"].tolist() == ["NVIDIA A100; NVIDIA H100", "NVIDIA A100", ""]
    assert frame["deviations_ours"].tolist() == ["bf16 autocast, channels_last, TF32 matmul", "", ""]
    runs = aggregate.flat_runs(summaries)
    assert runs["deviations"].tolist() == ["bf16 autocast, channels_last", "bf16 autocast, TF32 matmul", "", ""]
    assert runs["device_name"].tolist()[:3] == ["NVIDIA A100", "NVIDIA H100", "NVIDIA A100"]
    models = aggregate.model_comparison(summaries).set_index(["dataset", "model"])
    assert models.loc[("cifar10", "a"), "deviations"] == "bf16 autocast, channels_last, TF32 matmul"
    assert models.loc[("cifar10", "a"), "device_name"] == "NVIDIA A100; NVIDIA H100"
    assert models.loc[("cifar100", "a"), "deviations"] == ""


def test_the_device_column_names_the_benchmark_devices_of_the_latencies_shown(tmp_path):
    (tmp_path / "t.csv").write_text("model,acc,cpu_ms\nA,90.0,5.0\n")
    summary = run_summary.summarize(fake_record("s", "cifar10", "a", extra=speed(device="NVIDIA A100")), bench_cpu())
    table = {"file": "t.csv", "match": {"model": {"A": {"model": "a"}}}, "metrics": {"acc": "test_top1_pct"}}
    assert paper.paper_table(table, "s", [summary], tmp_path / "t.csv")["device_ours"].tolist() == [
        "NVIDIA A100"]
    table["metrics"]["cpu_ms"] = "cpu_time_ms_mean"
    assert paper.paper_table(table, "s", [summary], tmp_path / "t.csv")["device_ours"].tolist() == [
        "NVIDIA A100; cpu model"]


def test_the_real_configs_notes_land_where_intended(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    written = run_aggregate(config, tmp_path, *write_inputs(config, tmp_path))

    def notes(name, key="model"):
        return pd.read_csv(written[name], dtype=str, keep_default_na=False).set_index(key)["notes"]

    fino = notes("seed000_table1_resnet_mnist.csv")
    assert fino.tolist() == ['[1] Undefined in the report ("Acurácia Conjunto de Teste Fino"); ours is the '
                             "last-epoch training accuracy."] * 3
    select = "The authors selected the checkpoint on the test set"
    mb_c10, mb_c100 = "MB = bytes / 1,024,000 in the paper's CIFAR-10 tables.", "MB = MiB (bytes / 2^20)"
    times = "The authors timed on an NVIDIA TITAN Xp and an Intel i7-7700K (PyTorch 0.3)"
    for name in ("seed002_table1_squeezenet.csv", "seed002_table2_mobilenet.csv", "seed002_table3_alexnet.csv",
                 "seed002_table4_vgg19.csv", "seed002_table5_squeezenet_dsc.csv"):
        by_dataset = notes(name, "dataset")
        assert f"[1] {select}" in by_dataset["CIFAR-10"] and f"[4] {times}" in by_dataset["CIFAR-10"], name
        assert f"[2] {mb_c10}" in by_dataset["CIFAR-10"] and mb_c100 not in by_dataset["CIFAR-10"], name
        assert f"[3] {mb_c100}" in by_dataset["CIFAR-100"] and mb_c10 not in by_dataset["CIFAR-100"], name
        assert f"[1] {select}" in by_dataset["CIFAR-100"] and f"[4] {times}" in by_dataset["CIFAR-100"], name
    # Table 1's cell notes sit on size_MB of the right rows, as the report reads them back.
    table1 = next(t for t in config["studies"]["seed002_squeezenet_dsc"]["tables"]
                  if t["file"] == "seed002_table1_squeezenet.csv")
    frame = pd.read_csv(written["seed002_table1_squeezenet.csv"], dtype=str, keep_default_na=False)
    placed = layout.place_notes(table1, "t1", ["model", "dataset"], list(table1["metrics"]),
                                   frame.to_dict("records"))
    assert frame["dataset"].tolist() == ["CIFAR-10", "CIFAR-100"]
    assert [cells["size_MB"] for cells in placed.cells] == [[2], [3]]
    assert [cells["cpu_time_ms_mean"] for cells in placed.cells] == [[4], [4]]
    assert "cpu_time_ms_std" not in placed.cells[0]
    for name, text in (("seed002_table6_cifar10.csv", mb_c10), ("seed002_table8_cifar100.csv", mb_c100)):
        for row in notes(name):
            assert row.startswith(f"[1] {select}") and f"[2] {text}" in row and "timed" not in row, name
    for name in ("seed002_table7_cifar10_times.csv", "seed002_table9_cifar100_times.csv"):
        assert all(row.startswith(f"[1] {times}") and "MB" not in row for row in notes(name)), name
    approx = notes("seed004_text_train_set_approx.csv", "freeze_level")
    assert len(approx) == 3 and all(row.startswith('[1] The report quotes these as approximate training-set values '
                                                   '("em torno de")') for row in approx)
    for name in ("seed001_accuracy_cifar10.csv", "seed003_table1_f1_test.csv", "seed004_test_result.csv"):
        assert (pd.read_csv(written[name], dtype=str, keep_default_na=False)["notes"] == "").all(), name


# ----- per study, seeds, partial results and layouts -----


def study_inputs(config, root, study, records=None):
    """The aggregate rule's inputs for one study: its metrics and benchmark files, paper tables and outputs."""
    metrics, bench = write_inputs(config, root, records)
    ours = [p for p in metrics if io.read_json(p)["settings"]["study"] == study]
    benches = [p for p in bench if io.read_json(p)["study"] == study]
    paper, out = table_files(config, root / "out")
    names = layout.study_tables(config, study)
    return ours, benches, {n: paper[n] for n in names}, {n: out[n] for n in names}


def test_a_study_is_aggregated_from_its_own_files_only(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    study = "seed001_resnet_mobilenet_cifar10"
    metrics, bench, paper, out = study_inputs(config, tmp_path, study)
    written = aggregate.aggregate_study(config, study, metrics, bench, paper, out, tmp_path / "runs.csv",
                                        tmp_path / "models.csv")
    assert set(written) == {"seed001_accuracy_cifar10.csv", "runs.csv", "models.csv"}
    runs = pd.read_csv(written["runs.csv"])
    assert set(runs["study"]) == {study} and len(runs) == 2
    assert list(runs.columns[:8]) == ["run_id", "study", "dataset", "model", "freeze", "variant", "seed", "status"]
    # Another study's record among the inputs is a wiring error, named.
    stray = write_inputs(config, tmp_path / "other")[0][0]
    with pytest.raises(ValueError, match="config does not define"):
        aggregate.aggregate_study(config, study, [*metrics, stray], bench, paper, out, tmp_path / "r.csv",
                                  tmp_path / "m.csv")


def test_min_seeds_makes_seeds_a_grid_axis_of_every_study(raw_config, tmp_path):
    raw_config["min_seeds"] = 3
    config = cfg.validate(raw_config)
    assert config["studies"]["seed003_kmnist_fcnn_cnn"]["seeds"] == [42, 43, 44]
    assert config["studies"]["seed001_resnet_mobilenet_cifar10"]["seeds"] == [0, 1, 2]
    study = "seed001_resnet_mobilenet_cifar10"
    tops = {0: 0.83, 1: 0.84, 2: 0.85}
    records = {run.id: fake_record(*run.id.split("/")[:4], seed=run.seed, top1=tops[run.seed])
               for run in cfg.expand_runs(config, [study])}
    metrics, bench, paper, out = study_inputs(config, tmp_path, study, records)
    written = aggregate.aggregate_study(config, study, metrics, bench, paper, out, tmp_path / "runs.csv",
                                        tmp_path / "models.csv")
    row = pd.read_csv(written["seed001_accuracy_cifar10.csv"]).set_index("model").loc["MobileNet"]
    assert row["test_acc_pct_ours"] == pytest.approx(84.0) and row["test_acc_pct_ours_n"] == 3
    assert row["test_acc_pct_ours_std"] == pytest.approx(1.0)
    assert row["test_acc_pct_ours_ci95_low"] == pytest.approx(84 - 4.303 / 3 ** 0.5, abs=1e-3)
    # 84.18 lies inside 84.0 ± 2.48: with three seeds the interval decides.
    assert row["test_acc_pct_verdict"] == "agree" and "inside our 95 % interval" in row["test_acc_pct_reason"]
    # The benchmark measured one run's weights: its numbers count once, not once per seed.
    seed002 = "seed002_squeezenet_dsc"
    metrics, bench, paper, out = study_inputs(config, tmp_path / "b", seed002)
    written = aggregate.aggregate_study(config, seed002, metrics, bench, paper, out, tmp_path / "r2.csv",
                                        tmp_path / "m2.csv")
    times = pd.read_csv(written["seed002_table7_cifar10_times.csv"])
    assert (times["cpu_time_ms_mean_ours_n"] == 1).all()
    accuracy = pd.read_csv(written["seed002_table6_cifar10.csv"])
    assert (accuracy["top1_acc_pct_ours_n"] == 3).all() and (accuracy["size_MB_ours_n"] == 1).all()


def test_partial_results_mark_failed_not_run_and_diverged_runs(raw_config, tmp_path):
    config = cfg.validate(raw_config)
    study = "seed002_squeezenet_dsc"
    runs = {run.model + "/" + run.dataset: run for run in cfg.expand_runs(config, [study])}
    diverged = runs["mobilenet/cifar10"]
    records = {diverged.id: {"status": "diverged", "run_id": diverged.id, "epochs_run": 3,
                             "settings": fake_record(*diverged.id.split("/")[:4])["settings"]}}
    metrics, bench, paper, out = study_inputs(config, tmp_path, study, records)
    failed, not_run = runs["vgg19/cifar10"], runs["alexnet/cifar10"]
    logs = {run.id: tmp_path / "logs" / f"{run.id}.log" for run in runs.values()}
    logs[failed.id].parent.mkdir(parents=True)
    logs[failed.id].write_text("RuntimeError: CUDA out of memory\n")  # the job ran and failed: its log stays
    kept = [p for p in metrics if io.read_json(p)["run_id"] not in (failed.id, not_run.id)]
    # Their benchmarks never ran either (they need the weights).
    kept_bench = [p for p in bench if io.read_json(p)["model"] not in ("vgg19", "alexnet")
                  or io.read_json(p)["dataset"] != "cifar10"]
    with pytest.raises(ValueError, match="no metrics file among the inputs"):
        aggregate.aggregate_study(config, study, kept, kept_bench, paper, out, tmp_path / "r.csv", tmp_path / "m.csv",
                                  logs)
    written = aggregate.aggregate_study(config, study, kept, kept_bench, paper, out, tmp_path / "r.csv",
                                        tmp_path / "m.csv", logs, partial=True)
    table6 = pd.read_csv(written["seed002_table6_cifar10.csv"], dtype=str, keep_default_na=False).set_index("model")
    assert table6.loc["VGG19", "status_ours"] == "failed" and table6.loc["AlexNet", "status_ours"] == "not run"
    assert table6.loc["MobileNet", "status_ours"] == "diverged" and table6.loc["SqueezeNet", "status_ours"] == "ok"
    assert table6.loc["VGG19", "top1_acc_pct_ours"] == "" and table6.loc["VGG19", "top1_acc_pct_reason"] == "failed"
    assert table6.loc["AlexNet", "top1_acc_pct_reason"] == "not run"
    assert table6.loc["MobileNet", "top1_acc_pct_verdict"] == "not comparable"
    assert table6.loc["MobileNet", "top1_acc_pct_reason"] == "diverged"
    assert table6.loc["VGG19", "size_MB_reason"] == "benchmark not run"
    assert table6.loc["SqueezeNet", "top1_acc_pct_verdict"] in ("agree", "differ")
    flat = pd.read_csv(written["runs.csv"]).set_index("run_id")
    assert flat.loc[failed.id, "status"] == "failed" and flat.loc[not_run.id, "status"] == "not run"
    assert flat.loc[failed.id, "log"] == str(logs[failed.id])


LAYOUT_CSV = "model,dataset,acc,size\nA,CIFAR-10,89.10,2.99\nA,CIFAR-100,70.00,3.10\nB,CIFAR-10,80.00,1.08\n"


@pytest.mark.parametrize("layout, words", [
    ({"rows": ["modell"]}, r"layout.rows\[0\].*'modell' is neither 'metric' nor a key column.*model, dataset"),
    ({"rows": ["model"], "columns": ["model"]}, "'model' is in both rows and columns"),
    ({"rows": ["model"], "columns": ["dataset"]}, "prints 2 metrics .* neither rows nor columns has 'metric'"),
    ({"rows": ["metric"], "columns": ["model"]}, "lines 2 and 3 .* fall in the same cell .*add the key column"),
    ({"units": {"accuracy": "%"}}, "layout.units.accuracy.*not a metric column"),
    ({"plus_minus": {"acc": "std"}}, "layout.plus_minus.acc.*'std' is not a metric column"),
])
def test_a_layout_that_cannot_print_the_table_is_an_error_naming_the_key(tmp_path, layout, words):
    path = tmp_path / "t.csv"
    path.write_text(LAYOUT_CSV)
    table = {"file": str(path), "metrics": {"acc": "test_top1_pct", "size": "size_MB_paper_unit"}, "layout": layout}
    records = pd.read_csv(path, dtype=str).to_dict("records")
    with pytest.raises(ValueError, match=words):
        specs.check_layout(table, "studies.s.tables[0]", path, ["model", "dataset"], ["acc", "size"], records)


def test_a_bad_layout_in_the_config_stops_before_any_job(raw_config):
    raw_config["studies"]["seed003_kmnist_fcnn_cnn"]["tables"][0]["layout"] = {"rows": ["klass"],
                                                                              "columns": ["experiment"]}
    with pytest.raises(cfg.ConfigError, match=r"studies.seed003_kmnist_fcnn_cnn.tables\[0\].layout.rows\[0\].*'klass'"):
        startup.check(raw_config)


def test_default_layout_rows_are_the_key_columns_that_vary(raw_config):
    config = cfg.validate(cfg.deep_merge(raw_config, cfg.load_yaml(REPO / "tests" / "data" / "sixth_study.yaml")))
    table = config["studies"]["tiny_mnist_fcnn_vs_cnn"]["tables"][0]
    records = pd.read_csv(cfg.paper_table_path(config, table), dtype=str).to_dict("records")
    assert layout.layout_dims(table, ["source", "model"], records) == (["model"], ["metric"])
