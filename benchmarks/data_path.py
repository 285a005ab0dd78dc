"""Epoch time with the usual torchvision data path versus cnnrepro's on-device batch path.

(a) "torchvision": a Dataset that turns each uint8 HWC image into a PIL image and applies
    RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize (seed 002's
    transform), fed by DataLoader(batch_size=128, shuffle=True, num_workers=W).
(b) "cnnrepro": the training engine's own path (cnnrepro.data.splits.Split + augment.build_batch_transform
    with augment="crop_flip" and the same mean/std): the split is one uint8 tensor on the device,
    each batch is a random-permutation index plus one batched transform.

Both paths train the same model from the same initial weights with the same step (forward,
cross-entropy, backward, SGD), so only the data path differs. Runs are interleaved and the order
flips every repeat, so slow drift (thermal, other load) hits both paths alike. For every epoch we
time the data fetch (waiting for / producing the batch, including the move to the device) and the
compute separately with time.perf_counter; on CUDA both are closed with a synchronize.

A "data only" pass iterates every batch of --images without a model; it isolates the data-path
speed-up and always runs over the full image set.

Not part of the test suite. Run from the project root:

    python benchmarks/data_path.py                      # defaults, see --help
    python benchmarks/data_path.py --models squeezenet,mobilenet,resnet18_cifar --train-images 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnrepro.data import augment, sources
from cnnrepro.data.splits import Split
from cnnrepro.models import build_model

# ../shared/data beside the repository (see the README); CNNREPRO_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("CNNREPRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_DATA = str(SHARED_DATA / "cifar10_train.npz")
# Seed 002 (kuangliu's pytorch-cifar) normalisation: config.yaml "cifar10_kuangliu".
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
BATCH = 128


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def load_images(path: str, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """n CIFAR-10 images as uint8 HWC numpy plus int64 labels, and a note saying where they came from."""
    if Path(path).exists():
        with np.load(path) as d:
            x, y = d["x"], d["y"].astype(np.int64)
        source = f"{path} (real CIFAR-10 subset, {len(x)} images)"
    else:
        # Same shapes and dtype as CIFAR-10; the timings do not depend on pixel content.
        tr_x, tr_y = sources.make_synthetic("cifar10", max(n, 1), 10)["train"]
        x, y = tr_x.permute(0, 2, 3, 1).contiguous().numpy(), tr_y.numpy()
        source = f"synthetic CIFAR-10 stand-in ({path} not found)"
    if n > len(x):
        # Tile rather than fail so larger --images still measure something; said in the output.
        reps = -(-n // len(x))
        x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
        source += f", tiled to {n}"
    return np.ascontiguousarray(x[:n]), y[:n], source


class PILDataset(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: numpy HWC -> PIL -> transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def torchvision_transform():
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def path_a(x: np.ndarray, y: np.ndarray, workers: int, seed: int, device: torch.device):
    """Batches from the usual Dataset + DataLoader; a fresh loader per epoch, as a training script has."""
    torch.manual_seed(seed)  # per-sample transforms draw from the global RNG (in workers: from its seed)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(PILDataset(x, y, torchvision_transform()), batch_size=BATCH, shuffle=True,
                        num_workers=workers, generator=g, pin_memory=device.type == "cuda")
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def make_split(x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
    """The engine's Split: uint8 NCHW on the device plus the compiled batch transform."""
    spec = {"rgb": False, "input_size": None, "augment": "crop_flip", "mean": list(MEAN), "std": list(STD)}
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NCHW, as the compact file stores it
    return Split(xt, torch.from_numpy(y), augment.build_batch_transform(spec, device), device)


def path_b(split: Split, seed: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(seed)
    yield from split.batches(BATCH, g, train=True)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def make_sync(device: torch.device):
    # CPU ops are synchronous; on CUDA the clock must wait for queued kernels to be honest.
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed_epoch(batches, step, sync) -> dict:
    """Run one epoch; time spent getting each batch vs computing on it, and the wall total."""
    data_s = compute_s = 0.0
    n = 0
    sync()
    start = time.perf_counter()
    it = iter(batches)  # for path (a) worker start-up lands in the first fetch, where it belongs
    while True:
        t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            break
        sync()
        t1 = time.perf_counter()
        if step is not None:
            step(xb, yb)
            sync()
        t2 = time.perf_counter()
        data_s += t1 - t0
        compute_s += t2 - t1
        n += len(yb)
    total = time.perf_counter() - start
    return {"total": total, "data": data_s, "compute": compute_s, "images": n}


class Trainer:
    """One model; every timed epoch restarts from the same weights and a fresh optimiser."""

    def __init__(self, name: str, device: torch.device, seed: int):
        torch.manual_seed(seed)
        # input_size=32 sizes the FC layers of models whose native input differs (cnn, fcnn: 28).
        model = build_model(name, 10, in_channels=3, input_size=32)
        # Same memory format choice as the engine (train.py), for both paths alike.
        self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=fmt)
        self.init = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt = None

    def reset(self) -> None:
        self.model.load_state_dict(self.init)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(self.model(xb), yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="npz with x uint8 [N,32,32,3], y; synthetic if missing")
    p.add_argument("--images", type=int, default=10000, help="images in the data-only pass (always run)")
    # On 2 CPU cores a batch-128 training step takes ~0.5 s (squeezenet, mobilenet) to ~3.5 s
    # (resnet18_cifar) when the machine is quiet, and 3x that under other load. Full epochs for 3 paths
    # x 2 repeats x 3 models would take over an hour, so the defaults time 10 batches of the two
    # seed-002 models (~1.5 min quiet, <10 min under 4x load). --train-images 10000 gives full epochs.
    p.add_argument("--train-images", type=int, default=1280,
                   help="images per timed training epoch (first N of --images)")
    p.add_argument("--models", default="squeezenet,mobilenet",
                   help="comma-separated cnnrepro model names, e.g. squeezenet,mobilenet,resnet18_cifar; "
                        "empty = data-only pass only")
    p.add_argument("--workers", default="2,0", help="comma-separated DataLoader num_workers to try for path (a)")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per path and model (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def main(argv=None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sync = make_sync(device)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    names = [m for m in args.models.split(",") if m.strip()]
    n_train = min(args.train_images, args.images)

    x, y, source = load_images(args.data, args.images)
    split_all = make_split(x, y, device)
    split_train = make_split(x[:n_train], y[:n_train], device)
    # Variants: one per worker count for (a), then (b).
    variants = [f"a:torchvision w={w}" for w in workers] + ["b:cnnrepro"]

    def batches(variant: str, which: str, seed: int):
        xs, ys, sp = (x, y, split_all) if which == "all" else (x[:n_train], y[:n_train], split_train)
        if variant.startswith("a"):
            return path_a(xs, ys, int(variant.split("=")[1]), seed, device)
        return path_b(sp, seed, device)

    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    full = (f"python benchmarks/data_path.py --data {args.data} --images {args.images} "
            f"--train-images {n_train} --models {shlex.quote(','.join(names))} --workers {args.workers} "
            f"--repeats {args.repeats} --threads {args.threads} --device {args.device} --seed {args.seed}")
    print(f"command : {command}")
    print(f"same as : {full}")
    print(f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}, "
          f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"threads={torch.get_num_threads()}, device={device}")
    print(f"data    : {source}")
    print(f"load avg at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}  "
          "(other processes on the machine distort the figures)")
    print(flush=True)

    # Untimed warm-up: imports, PIL, first allocations, so the first timed run is not penalised.
    for v in variants:
        next(iter(batches(v, "train", args.seed)))

    # ---- data-only pass over all --images ------------------------------------------------
    data_only = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            data_only[v].append(timed_epoch(batches(v, "all", args.seed + r), None, sync))
    b_data = median(data_only["b:cnnrepro"], "total")
    rows = []
    for v in variants:
        t = median(data_only[v], "total")
        rows.append([v, f"{t:.2f}", f"{args.images / t:,.0f}", f"{t / b_data:.1f}x"])
    print(f"Data only: one pass over {args.images} images, batch {BATCH}, crop+flip+normalise, "
          f"median of {args.repeats}")
    print(fmt_table(["path", "seconds", "images/s", "a/b"], rows))
    print(flush=True)

    # ---- training epochs -----------------------------------------------------------------
    if not names:
        print(f"benchmark wall time {time.perf_counter() - began:.0f} s")
        return
    results = {}
    for name in names:
        trainer = Trainer(name, device, args.seed)
        trainer.reset()
        # Warm the model's kernels (oneDNN primitives are built per input shape) outside the clock,
        # including the short last batch, so whichever path runs first is not charged for it.
        xb, yb = next(iter(batches("b:cnnrepro", "train", args.seed)))
        for size in {len(yb), n_train % BATCH or len(yb)}:
            for _ in range(2):
                trainer.step(xb[:size], yb[:size])
        per = {v: [] for v in variants}
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                trainer.reset()
                per[v].append(timed_epoch(batches(v, "train", args.seed + r), trainer.step, sync))
                e = per[v][-1]
                # The 1-min load average flags epochs that shared the cores with other work; this run
                # alone accounts for about --threads (plus the workers for path a).
                print(f"  {name:15s} repeat {r + 1} {v:20s} {e['total']:7.2f} s "
                      f"(data {e['data']:6.2f} s, compute {e['compute']:7.2f} s)  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
        results[name] = per

    rows = []
    for name, per in results.items():
        b_total = median(per["b:cnnrepro"], "total")
        for v in variants:
            t = median(per[v], "total")
            frac = statistics.median(e["data"] / (e["data"] + e["compute"]) for e in per[v])
            rows.append([name, v, f"{t:.2f}", f"{t * args.images / n_train:.1f}",
                         f"{median(per[v], 'data'):.2f}", f"{median(per[v], 'compute'):.2f}",
                         f"{100 * frac:.1f}%", f"{t / b_total:.2f}x"])
    print()
    print(f"Training epoch: {n_train} images, batch {BATCH}, forward+backward+SGD, median of {args.repeats}"
          + (f"; 'epoch est.' scales to {args.images} images" if n_train != args.images else ""))
    print(fmt_table(["model", "path", "epoch s", f"epoch est. ({args.images})", "data s", "compute s",
                     "data share", "a/b"], rows))
    print(f"\nload avg at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"benchmark wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
