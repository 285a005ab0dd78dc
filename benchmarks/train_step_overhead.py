"""What the engine's training step costs beyond the model (not part of the test suite).

A model so small that the loop around it shows: one linear layer 784 -> 10 on 28x28 grey images, batch 128,
SGD, cross-entropy (issue 23 part 4). Two loops train it over the same batches (the engine's
``Split.batches``: a permutation on the device, uint8 -> float, normalisation) from the same initial weights:

- **bare**: the textbook loop: forward, loss, ``zero_grad``, ``backward``, ``step``; nothing else;
- **engine**: ``cnnrepro.engine.train.train_one_epoch``, which also returns the epoch's loss and accuracy
  (the run's history), guards against running out of memory, autocasts when ``speed.amp_bf16`` asks, and
  draws a progress bar on a terminal.

The loops alternate, each starting first every other repeat, and the per-step time is the median of the
repeats (a shared machine drifts by several per cent). After timing, both loops train once more from the same
weights and generator state: the weights must be equal bit for bit (the engine computes what the bare loop
computes), and the script says so.

    python benchmarks/train_step_overhead.py                 # 100 steps x 31 repeats, one thread
    python benchmarks/train_step_overhead.py --threads 2 --steps 400
    python benchmarks/train_step_overhead.py --clock cpu     # on a busy machine: CPU time, not wall time
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnnrepro.data import augment
from cnnrepro.data.splits import Split
from cnnrepro.engine import train
from cnnrepro.runtime.device import device_name, pick_device

MNIST_NORMALIZATION = {"mean": [0.1307], "std": [0.3081]}


def make_split(steps: int, batch_size: int, device: torch.device, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    n = steps * batch_size
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    transform = augment.build_batch_transform({"rgb": False, "input_size": None, "augment": "none",
                                               **MNIST_NORMALIZATION}, device)
    return Split(x, y, transform, device)


def bare_epoch(model, split: Split, optimizer, batch_size: int, generator) -> None:
    model.train()
    for x, y in split.batches(batch_size, generator, train=True):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def engine_epoch(model, split: Split, optimizer, batch_size: int, generator) -> None:
    train.train_one_epoch(model, split, optimizer, F.cross_entropy, batch_size, generator, "train", False)


LOOPS = {"bare": bare_epoch, "engine": engine_epoch}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# wall: what a user waits for; cpu: this process's CPU time, which other processes on a shared machine disturb
# far less (on the CPU device, with one thread, it is the loop's own work).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_epoch(loop, model, split, batch_size, device, seed, clock=time.perf_counter) -> float:
    """Seconds per step of one epoch, with a fresh optimizer and generator (as every repeat of either loop)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    start = clock()
    loop(model, split, optimizer, batch_size, generator)
    synchronize(device)
    return (clock() - start) / (len(split) // batch_size)


def same_result(model, split, batch_size, device, seed) -> bool:
    """Whether one epoch of each loop from the same weights and generator state ends with the same weights."""
    weights = {}
    for name, loop in LOOPS.items():
        net = copy.deepcopy(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loop(net, split, optimizer, batch_size, torch.Generator(device=device).manual_seed(seed))
        weights[name] = net.state_dict()
    return all(torch.equal(weights["bare"][k], weights["engine"][k]) for k in weights["bare"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch (default 100)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs of each loop first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the model is tiny)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall (default) or cpu: process CPU time, for a CPU run on a busy machine")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(device)
    split = make_split(args.steps, args.batch_size, device, args.seed)
    for _ in range(args.warmup):
        for loop in LOOPS.values():
            time_epoch(loop, model, split, args.batch_size, device, args.seed)
    times = {name: [] for name in LOOPS}
    for repeat in range(args.repeats):
        order = list(LOOPS) if repeat % 2 == 0 else list(reversed(LOOPS))
        for name in order:
            times[name].append(time_epoch(LOOPS[name], model, split, args.batch_size, device, args.seed,
                                          CLOCKS[args.clock]))

    print(f"torch {torch.__version__}, {device} ({device_name(device)}), {args.threads} thread(s), "
          f"load {os.getloadavg()[0]:.2f}; Linear(784, 10), batch {args.batch_size}, SGD, {args.steps} steps x "
          f"{args.repeats} repeats, {args.clock} clock")
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    for name, values in times.items():
        ms = sorted(v * 1e3 for v in values)
        print(f"  {name:<7} {median[name]:.3f} ms/step (min {ms[0]:.3f}, max {ms[-1]:.3f})")
    # Each repeat's pair ran back to back: the median of their ratios is the least affected by drift.
    ratios = sorted(e / b for e, b in zip(times["engine"], times["bare"]))
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"  engine / bare: {statistics.median(ratios):.3f} per repeat (quartiles {quartiles[0]:.3f} .. "
          f"{quartiles[2]:.3f}); +{median['engine'] - median['bare']:.3f} ms per step")
    print(f"  same weights after one epoch of each: {same_result(model, split, args.batch_size, device, args.seed)}")


if __name__ == "__main__":
    main()
