"""The compute plan: FLOPs counted on the meta device, epochs, savings, the T4 calibration and the slow-run guard."""

import pytest

from cnnrepro import config as cfg
from cnnrepro.plan import cost as model_costs
from cnnrepro.plan import guard, rates, runs


@pytest.fixture
def configured(raw_config):
    config = cfg.validate(raw_config)
    return config, cfg.settings_by_run(config)


def _config(raw_config, overlay_paths=()):
    from tests.conftest import REPO

    config = raw_config
    for path in overlay_paths:
        config = cfg.deep_merge(config, cfg.load_yaml(REPO / path))
    return cfg.validate(config)


def _by_id(plans):
    return {p.run_id: p for p in plans}


def never_calibrate(threads):
    raise AssertionError("the CPU was measured although the reference bounds settle this configuration")


def test_forward_flops_match_the_published_counts():
    # torchvision's model tables list multiply-accumulates at 224 px: ResNet18 1.81 G, ResNet50 4.09 G,
    # SqueezeNet 1.1 0.35 G; one MAC is 2 FLOPs.
    for model, gmacs in (("resnet18", 1.81), ("resnet50", 4.09), ("squeezenet1_1", 0.35)):
        cost = model_costs.model_cost(model, 1000, 3, 224, 224, "{}")
        assert cost.flops / 2e9 == pytest.approx(gmacs, rel=0.03), model
    assert model_costs.model_cost("resnet18", 1000, 3, 224, 224, "{}") is model_costs.model_cost(
        "resnet18", 1000, 3, 224, 224, "{}")


def test_only_the_models_own_ops_are_counted_not_the_making_of_its_input():
    cost = model_costs.model_cost("cnn", 10, 1, None, 28, "{}")  # a convolution first
    first = cost.layers[0]
    assert (first.flops_before, first.ops_before, first.bytes_before) == (0, 0, 0)
    assert first.input_bytes == 28 * 28 * 4  # one float image reaches the first layer


def test_the_gpu_efficiency_is_the_one_seed_000s_t4_times_imply():
    calibration = rates.t4_calibration()
    assert calibration["pooled"] == pytest.approx(rates.GPU_EFFICIENCY, abs=0.005)
    assert all(0.2 < calibration[m] < 0.45 for m in rates.SEED000_T4_SECONDS)
    # With that efficiency the model reproduces the T4 times it was calibrated on, to within their spread.
    rate = rates.gpu_rate("t4")
    assert rate.flops_per_second == pytest.approx(8.1e12 * rates.GPU_EFFICIENCY)


def test_speed_switches_pick_the_tensor_core_peak_only_where_it_exists():
    assert rates.gpu_rate("h100").flops_per_second == pytest.approx(67e12 * rates.GPU_EFFICIENCY)
    assert rates.gpu_rate("h100", {"tf32": True}).flops_per_second == pytest.approx(494.5e12 * rates.TENSOR_EFFICIENCY)
    assert rates.gpu_rate("a100", {"amp_bf16": True}).flops_per_second == pytest.approx(312e12 * rates.TENSOR_EFFICIENCY)
    t4 = rates.gpu_rate("t4").flops_per_second
    assert rates.gpu_rate("t4", {"amp_bf16": True, "tf32": True}).flops_per_second == t4  # Turing has neither


def test_a_freeze_level_splits_the_forward_pass_into_a_fixed_prefix_and_a_trained_tail(configured):
    _, by_run = configured
    probe = by_run["seed000_resnet_mnist/mnist/resnet18/head/base/seed0"]
    stage = model_costs.stages(probe)
    assert stage.tail_flops == 2 * 512 * 10  # only the new fc trains
    assert stage.trainable_params == 5130
    assert not stage.prefix_fixed and "BatchNorm" in stage.prefix_reason  # bn_frozen: train, as the authors ran
    pure = {**probe, "recipe": {**probe["recipe"], "bn_frozen": "eval"}}
    assert model_costs.stages(pure).prefix_fixed
    seed004 = "seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/{}/batch_size-250_epochs-50/seed0"
    fire = model_costs.stages(by_run[seed004.format("last_two_fire_and_head")])
    whole = model_costs.settings_cost(by_run[seed004.format("none")])
    assert 0 < fire.tail_flops < whole.flops / 2 and fire.prefix_fixed
    assert fire.trainable_params == 391_306
    # The dropout before the new conv10 goes with the tail (applied to the cached output), so the prefix is fixed.
    assert model_costs.stages(by_run[seed004.format("head")]).prefix_fixed


def test_backward_is_twice_the_forward_of_what_trains_not_the_counters_depthwise_figure(configured):
    config, by_run = configured
    run = by_run["seed001_resnet_mobilenet_cifar10/cifar10/mobilenet/none/base/seed0"]
    run_plan = runs.plan_run(run, cfg.data_settings(config, "cifar10"), runs.NO_SAVINGS)
    train = next(p for p in run_plan.passes if p.what == "train")
    assert train.flops_per_image == 3 * model_costs.settings_cost(run).flops
    assert train.images == 50_000 * 20


def test_early_stopping_runs_use_the_authors_stop_epoch_or_the_cap(configured, raw_config):
    _, by_run = configured
    assert runs.run_epochs(by_run["seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-none/seed42"]) == (1154, "authors")
    augmented = by_run["seed003_kmnist_fcnn_cnn/kmnist/cnn/none/augment-kmnist10x/seed42"]
    assert runs.run_epochs(augmented) == (334, "authors")
    assert runs.run_epochs(by_run["seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"]) == (200, "cap")
    assert runs.run_epochs(by_run["seed000_resnet_mnist/mnist/resnet18/head/base/seed0"]) == (30, "fixed")
    quick = cfg.settings_by_run(_config(raw_config, ["presets/quick.yaml"]))
    assert runs.run_epochs(quick["seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-none/seed42"]) == (3, "cap")


def test_every_saving_applies_where_it_is_exact_and_only_there(configured):
    config, by_run = configured
    none = _by_id(runs.plan_runs(config, runs.NO_SAVINGS, by_run))
    every = _by_id(runs.plan_runs(config, runs.all_savings(eval_every=10), by_run))
    seed004 = "seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/{}/batch_size-{}_epochs-{}/seed0"
    # Warm-started epoch grids: a (freeze level, batch size) trains 300 epochs instead of 50 + 150 + 300.
    for level in ("head", "last_two_fire_and_head", "none"):
        trained = [every[seed004.format(level, 500, n)].trained_epochs for n in (50, 150, 300)]
        assert trained == [50, 100, 150]
        assert sum(none[seed004.format(level, 500, n)].trained_epochs for n in (50, 150, 300)) == 500
    fire = seed004.format("last_two_fire_and_head", 250, 50)
    assert (none[fire].cache, every[fire].cache) == ("none", "prefix")
    assert every[fire].flops < none[fire].flops / 2
    # eval_every: seed 000 evaluates 3 times in 30 epochs; seed 002 selects the best epoch and seed 003's
    # schedule monitors the evaluation loss, so they evaluate every epoch.
    assert every["seed000_resnet_mnist/mnist/resnet50/head/base/seed0"].evaluations == 3
    assert every["seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"].evaluations == 200
    assert every["seed003_kmnist_fcnn_cnn/kmnist/cnn/none/augment-none/seed42"].evaluations == 596
    # Seed 000 updates BatchNorm statistics in its frozen backbone: never cached.
    assert every["seed000_resnet_mnist/mnist/resnet18/head/base/seed0"].cache == "none"
    rate = rates.gpu_rate("h100")
    totals = {t.study: t for t in runs.study_totals(every.values(), rate)}
    plain = {t.study: t for t in runs.study_totals(none.values(), rate)}
    seed004_study = "seed004_squeezenet_transfer_cifar10"
    assert totals[seed004_study].seconds < 0.8 * plain[seed004_study].seconds
    assert totals["seed002_squeezenet_dsc"].flops == plain["seed002_squeezenet_dsc"].flops


def test_time_is_bound_by_arithmetic_for_big_models_and_by_launches_for_tiny_ones():
    rate = rates.Rate("x", "x", 1e12, 1e-5, "")
    big = rates.Pass("train", 1000, 100, 1e10, 50)  # 1e13 FLOPs: 10 s of arithmetic, 5 ms of launches
    tiny = rates.Pass("train", 100_000, 1, 1e3, 50)  # 0.1 ms of arithmetic, 50 s of launches
    assert big.seconds(rate) == pytest.approx(10)
    assert tiny.seconds(rate) == pytest.approx(50)


def test_device_memory_counts_the_batch_the_model_and_the_data(configured):
    config, by_run = configured
    run = by_run["seed001_resnet_mobilenet_cifar10/cifar10/resnet18_cifar/none/base/seed0"]
    data = cfg.data_settings(config, "cifar10")
    small = runs.plan_run(run, data).device_bytes
    big = runs.plan_run({**run, "recipe": {**run["recipe"], "batch_size": 512}}, data).device_bytes
    assert big > small + 3 * 2**30  # ResNet18-CIFAR keeps ~3 MB of activations per image for the backward pass
    assert small > 4 * 4 * 11_173_962 + 60_000 * 3072  # weights, gradients, Adam's two moments, the uint8 data


def test_a_long_cpu_only_local_run_is_stopped_with_the_ways_to_proceed(configured, raw_config):
    config, by_run = configured
    plans = runs.plan_runs(config, runs.configured_savings(config), by_run)
    message = guard.slow_run_message(config, plans, cores=8, gpus=0, calibrate=never_calibrate)
    assert message and "no GPU is visible" in message
    for way in ("--config allow_slow=true", "presets/quick.yaml", "profiles/slurm", "cnnrepro plan --device cpu"):
        assert way in message
    assert guard.slow_run_message({**config, "allow_slow": True}, plans, 8, 0) is None
    assert guard.slow_run_message(config, plans, 8, gpus=2, calibrate=never_calibrate) is None
    pinned = {**config, "device": "cpu"}
    assert "device: cpu" in guard.slow_run_message(pinned, plans, 8, gpus=2, calibrate=never_calibrate)
    assert guard.slow_run_message(config, [], 8, 0) is None  # nothing left to train
    # The presets are meant for a CPU or a first look: none of them is stopped.
    for preset in ("presets/smoke.yaml", "presets/quick.yaml", "presets/offline.yaml"):
        preset_config = _config(raw_config, [preset])
        preset_plans = runs.plan_runs(preset_config, runs.configured_savings(preset_config))
        assert guard.slow_run_message(preset_config, preset_plans, 2, 0, calibrate=never_calibrate) is None, preset


def test_the_cpu_is_measured_only_when_the_bounds_do_not_settle_it(configured):
    config, by_run = configured
    run_plan = runs.plan_runs(config, runs.configured_savings(config), by_run)[0]
    reference = rates.reference_cpu_rate(config["train_threads"])
    hours = guard.local_cpu_hours([run_plan], reference, 1)
    # Enough copies of one run to land between the optimistic and the reference estimate.
    copies = int(guard.SLOW_RUN_HOURS / hours * 2) + 1
    calls = []

    def measured(threads, speed):
        def calibrate(t):
            calls.append(t)
            return rates.Rate("cpu", "here", reference.flops_per_second * speed, reference.seconds_per_op, "m")
        return calibrate

    assert guard.slow_run_message(config, [run_plan] * copies, 4, 0, calibrate=measured(4, 3.5)) is None
    assert "hours" in guard.slow_run_message(config, [run_plan] * copies, 4, 0, calibrate=measured(4, 0.5))
    assert calls == [4, 4]


def test_calibrating_the_cpu_measures_a_positive_rate():
    rate = rates.calibrate_cpu(1, seconds=0.2)
    assert rate.flops_per_second > 1e8 and 0 < rate.seconds_per_op < 1e-3
    assert "measured here" in rate.basis


@pytest.mark.slow
def test_snakemake_stops_a_long_cpu_only_run_before_any_job(tmp_path):
    from tests.test_e2e import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "--cores", "2", "--config", "device=cpu", f"results={tmp_path / 'results'}",
                       timeout=600)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Stopped before any job" in output and "allow_slow=true" in output
    assert not (tmp_path / "results").exists() and not (workdir / "data").exists()


# ------------------------------------------------------------------------------------------ small runs sharing a GPU
SEED003 = "seed003_kmnist_fcnn_cnn"


def test_only_runs_whose_planned_memory_fits_k_times_in_the_gpu_share_one(configured):
    from cnnrepro.plan import share

    config, by_run = configured
    plans = runs.plan_runs(config, runs.configured_savings(config), by_run)

    def sharing(**overrides):
        changed = {**config, **overrides}
        return {p.run_id for p in plans if share.shares_gpu(changed, by_run[p.run_id], p.device_bytes)}

    assert config["gpu_share"] == 1 and sharing() == set()  # the default: every GPU job alone, as before
    # Four to a T4's 16 GiB (the default gpu_memory_gib): seed 003's runs (0.1-0.6 GiB planned) share, seed 000's
    # ResNets (3.2 GiB with batch 512 at 224 px, and a CUDA context) do not.
    four = sharing(gpu_share=4)
    assert {p.run_id for p in plans if p.study == SEED003} <= four
    assert not {p.run_id for p in plans if p.study == "seed000_resnet_mnist"} & four
    assert four > sharing(gpu_share=8) and sharing(gpu_share=4, gpu_memory_gib=80) == {p.run_id for p in plans}
    small = next(p for p in plans if p.study == SEED003)
    assert not share.shares_gpu({**config, "gpu_share": 4}, {**by_run[small.run_id], "device": "cpu"},
                                small.device_bytes)  # a run pinned to the CPU holds no GPU at all
    for p in plans:  # the rule itself: the planned memory with a CUDA context, k times, in 90 % of the GPU
        fits = 4 * (p.device_bytes + share.CUDA_CONTEXT_BYTES) <= share.MEMORY_HEADROOM * 16 * 2**30
        assert (p.run_id in four) == fits, p.run_id


def test_the_wall_clock_overlaps_the_launches_of_sharing_runs_but_not_their_arithmetic():
    from cnnrepro.plan.share import GpuJob, wall_seconds

    launch_bound = [GpuJob(f"small{i}", 100, 10, shares=True) for i in range(4)]  # the GPU computes 10 s of 100
    compute_bound = [GpuJob(f"busy{i}", 100, 90, shares=True) for i in range(4)]
    alone = GpuJob("large", 200, 190, shares=False)
    assert wall_seconds(launch_bound + [alone], gpus=1, share=1) == pytest.approx(600)  # one after another
    assert wall_seconds(launch_bound, 1, 4) == pytest.approx(100)  # four at once, each as fast as alone
    assert wall_seconds(launch_bound, 1, 2) == pytest.approx(200)  # two at a time
    assert wall_seconds(compute_bound, 1, 4) == pytest.approx(360)  # their FLOPs take turns: 4 x 90 s
    assert wall_seconds(launch_bound + [alone], 1, 4) == pytest.approx(300)  # the large run holds the GPU alone
    assert wall_seconds(launch_bound + [alone], 2, 4) == pytest.approx(200)  # side by side on two GPUs
    # A run continuing another (epoch grid chaining) starts when it has ended, on whichever GPU.
    chain = [GpuJob("first", 100, 100, False), GpuJob("then", 50, 50, False, after="first"),
             GpuJob("other", 120, 0, False)]
    assert wall_seconds(chain, 2, 1) == pytest.approx(150) and wall_seconds(chain, 1, 1) == pytest.approx(270)
    assert wall_seconds([], 3, 4) == 0


def test_the_plans_wall_clock_on_one_and_on_n_gpus_moves_with_gpu_share(configured, raw_config):
    from cnnrepro import cli, startup

    rate = rates.gpu_rate("h100")

    def plan(gpu_share, gpus=1):
        checked = startup.check({**raw_config, "gpu_share": gpu_share})
        header, rows, studies = cli.plan_tables(checked, "h100", 10, rate=rate, gpus=gpus)
        config = checked.config
        walls = cli.GpuWalls(checked, runs.plan_runs(config, runs.configured_savings(config), checked.settings),
                             rate, gpus)
        return header, rows, studies, walls

    header, rows, studies, walls = plan(1)
    assert "gpu" not in rows[0] and not any("wall_" in key for key in studies[-1])  # without sharing: as before
    seed003_alone = sum(p.seconds(rate) for p in walls.plans if p.study == SEED003)
    assert walls.seconds(SEED003, 1) == pytest.approx(seed003_alone)  # one GPU, no sharing: one run after another
    _, _, studies, walls_two = plan(1, gpus=2)
    assert {"wall_1gpu", "wall_2gpus"} <= set(studies[-1]) and walls_two.seconds(None, 2) < walls.seconds(None, 1)
    seconds = {}
    for k in (2, 4):
        header, rows, studies, walls = plan(k, gpus=2)
        assert {row["gpu"] for row in rows if row["run"].startswith(SEED003)} == {"shared"}
        assert any(line.startswith(f"gpu_share {k}:") for line in header)
        seconds[k] = (walls.seconds(SEED003, 1), walls.seconds(None, 1), walls.seconds(None, 2))
    # Seed 003's five launch-bound runs, four at a time, take about half as long as one after another.
    assert seed003_alone > seconds[2][0] > seconds[4][0] and seconds[4][0] < 0.6 * seed003_alone
    assert seconds[2][1] > seconds[4][1] and seconds[4][2] < seconds[4][1]
