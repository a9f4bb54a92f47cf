#!/usr/bin/env python3
"""torchrun benchmark: wall time per epoch of one training process against N DDP ranks (gloo, CPU).
Prints figures; asserts nothing (speed goals are not tests).

    python benchmarks/bench_ddp.py                 # bakes the template with its defaults
    python benchmarks/bench_ddp.py --study DIR     # uses an existing baked study instead

A learnable series store (`stores.learnable_series`: CELLS x DAYS, 2 features) is written and
served over HTTP by the study's test server (in this process), and each configuration trains
EPOCHS epochs in its own launch of the study's `train` command, with the study's model settings
(train.model and its options, batch size per rank, lookback):

1. one process, one intra-op thread (`OMP_NUM_THREADS=1`);
2. one process, N threads;
3. `torchrun --standalone --nproc_per_node=N`, one thread per rank (torchrun's default).

Per configuration, medians over `--repeat` interleaved launches: the wall time of an epoch
after the first (the first also fetches the series) and of its training pass, training windows
per second, the CPU seconds (user + sys) of the whole launch, and the last validation loss (N
ranks take N times fewer, N times larger steps per epoch, so it differs). On CPUs, N ranks can at
best use N cores, like one process with N threads; GPUs are where one rank per device pays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TEMPLATE / "scripts")]


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch(name: str, command: list[str], threads: int, out: Path, env: dict[str, str]) -> dict[str, float | str]:
    """Run one training launch; its figures from the summary it wrote and from getrusage."""
    cpu0, wall0, load0 = cpu_seconds_of_children(), time.perf_counter(), os.getloadavg()[0]
    result = subprocess.run(command, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    later = summary["loader"][1:] or summary["loader"]
    epoch_s = statistics.median(e["epoch_s"] for e in later)
    train_s = statistics.median(e["elapsed_s"] for e in later)
    return {
        "name": name,
        "epoch_s": epoch_s,
        "train_s": train_s,
        "windows_per_s": summary["train_samples"] / train_s,
        "cpu_s": cpu_seconds_of_children() - cpu0,
        "launch_s": time.perf_counter() - wall0,
        "val_loss": summary["history"][-1]["val_loss"],
        "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, help="a baked study (default: bake the template)")
    parser.add_argument("--ranks", type=int, default=2, help="DDP ranks (and threads of configuration 2)")
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--days", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="launches of each configuration (medians)")
    ns = parser.parse_args()
    from bakery import bake
    from servers import study_package

    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        work = Path(tmp)
        study = ns.study.resolve() if ns.study else bake(work / "bake")
        package = study_package(study)
        sys.path.insert(0, str(study / "src"))
        conftest = __import__(f"{package}.tests.conftest", fromlist=["study_toml"])
        stores = __import__(f"{package}.tests.stores", fromlist=["learnable_series"])
        faultserver = __import__(f"{package}.tests.faultserver", fromlist=["FaultServer"])
        config_module = __import__(f"{package}.config", fromlist=["load_config"])

        config = conftest.study_toml(work / "study.toml", cache="none", patience=ns.epochs)
        cfg = config_module.load_config(config)
        t, lookback = cfg.train, cfg.etl.time_lookback
        x, y = stores.learnable_series(ns.cells, ns.days)
        stores.write_series_store(
            work / "srv", x, y, dataset_name=cfg.study.dataset_name, lookback=lookback, chunk_cells=4
        )
        print(
            f"study: {study}\nstore: {ns.cells} cells x {ns.days} days, lookback {lookback}; model {t.model} "
            f"{t.model_options}, batch {t.batch_size} per rank; {ns.epochs} epochs; "
            f"torch threads default {os.cpu_count()} CPUs; python {sys.version.split()[0]}\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(study / "src"), os.environ.get("PYTHONPATH", "")])}
        with faultserver.FaultServer(work / "srv") as server:
            cli = ["-m", package, "--config", str(config), "train", "--url", server.url, "--epochs", str(ns.epochs)]
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ns.ranks}"]
            runs = [
                ("1 process x 1 thread", [sys.executable], 1),
                (f"1 process x {ns.ranks} threads", [sys.executable], ns.ranks),
                (f"torchrun {ns.ranks} ranks x 1 thread", torchrun, 1),
            ]
            trials: dict[str, list[dict[str, float | str]]] = {name: [] for name, _, _ in runs}
            for trial in range(ns.repeat):  # interleaved, so a burst of load on the machine hits all alike
                for number, (name, head, threads) in enumerate(runs):
                    out = work / f"out{trial}-{number}"
                    trials[name].append(launch(name, [*head, *cli, "--out", str(out)], threads, out, env))

    print(
        f"{'configuration':<28} {'epoch s':>14} {'train s':>8} {'windows/s':>10} {'launch CPU s':>12} "
        f"{'val loss':>9} {'load avg':>9}"
    )
    medians = {}
    for name, rows in trials.items():
        median = {
            k: statistics.median(float(r[k]) for r in rows) for k in ("epoch_s", "train_s", "windows_per_s", "cpu_s")
        }
        medians[name] = median
        spread = f"{min(float(r['epoch_s']) for r in rows):.1f}-{max(float(r['epoch_s']) for r in rows):.1f}"
        print(
            f"{name:<28} {median['epoch_s']:>6.2f} ({spread:>5}) {median['train_s']:>8.2f} "
            f"{median['windows_per_s']:>10,.0f} {median['cpu_s']:>12.1f} {rows[-1]['val_loss']:>9.4f} "
            f"{' '.join(str(r['load']) for r in rows):>9}"
        )
    single, threaded, ddp = (medians[name] for name, _, _ in runs)
    print(
        f"\nmedian epoch time ({ns.repeat} launches each, min-max in brackets), {ns.ranks} ranks / 1 process "
        f"x 1 thread: {ddp['epoch_s'] / single['epoch_s']:.2f}; / 1 process x {ns.ranks} threads: "
        f"{ddp['epoch_s'] / threaded['epoch_s']:.2f} (the machine's load average around each launch: last column)"
    )


if __name__ == "__main__":
    main()
