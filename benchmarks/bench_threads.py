#!/usr/bin/env python3
"""CPU threads benchmark: one LSTM training step, idle and beside a busy process, per thread setting.
Prints figures; asserts nothing (speed goals are not tests).

    .venv/bin/python benchmarks/bench_threads.py [--steps 10] [--repeat 3]

The step is the study's default: an LSTM (train.model_options of study.toml: hidden 32, 1 layer)
and a linear head over windows of `time_lookback` steps (cookiecutter.json: 180) of 2 features,
batch `train.batch_size` (256), 11 classes, Adam and cross-entropy; random data (the step's cost
does not depend on the values). Each setting runs in a fresh process (libgomp reads its
environment once, when torch loads it), `--repeat` times interleaved, for `--steps` steps after
2 warm-up steps; medians of the wall and CPU seconds per step:

  default   torch as installed: one thread per core, libgomp's spinning wait;
  1 thread  OMP_NUM_THREADS=1;
  2 passive OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive;
  policy    labzarr.train.threads: prepare_threads() before `import torch`, apply_threads(model).

"busy" runs the same beside one CPU-bound process (`python -c 'while True: pass'`), started
before and stopped after each timed process. What bounds the figures: the CPU. A step is about
900 small OpenMP regions (2 threads) of elementwise and 256x256 matrix work; on a machine with
N cores and one busy process, a thread-count setting can at best get N-1 cores for the step,
and any extra CPU seconds per step (the CPU column against 1 thread) are waiting threads spinning.
On a machine shared with other work than the busy process, every figure is noisier: the load
average before each run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
STUDY_TOML = TEMPLATE / "{{cookiecutter.project_slug}}" / "study.toml"
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "passive"},
    "policy": {},
}
N_CLASSES = 11

STEP = """
import json, sys, time
hidden, layers, batch, lookback, features, steps, policy = json.loads(sys.argv[1])
if policy:
    from labzarr.train.threads import apply_threads, prepare_threads
    prepare_threads()
import torch
from torch import nn
torch.manual_seed(0)
lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
model = nn.Sequential(lstm, nn.Linear(hidden, 11))  # the head reads the last hidden state below
if policy:
    apply_threads(model)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
x, y = torch.randn(batch, lookback, features), torch.randint(0, 11, (batch,))
def step():
    optimizer.zero_grad()
    _, (h, _) = lstm(x)
    nn.functional.cross_entropy(model[1](h[-1]), y).backward()
    optimizer.step()
for _ in range(2):
    step()
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
print(json.dumps({"step_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads()}))
"""


def study_defaults() -> dict[str, int]:
    """The model and batch of the shipped study.toml and the lookback of cookiecutter.json."""
    text = STUDY_TOML.read_text()  # from [train] on: no template expressions
    train = tomllib.loads("[train]\n" + text.split("\n[train]\n", 1)[1])
    options = train["train"]["model_options"]
    answers = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    return {
        "hidden": options["hidden_size"],
        "layers": options["num_layers"],
        "batch": train["train"]["batch_size"],
        "lookback": int(answers["time_lookback"]),
        "features": len(answers["variables"].split(",")),
    }


def timed(name: str, model: dict[str, int], steps: int) -> dict[str, float]:
    """One fresh process of setting `name`: its seconds per step."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LABZARR_WAIT_POLICY")
    }
    env.update(SETTINGS[name])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEMPLATE / "labzarr" / "src"), env.get("PYTHONPATH")]))
    args = [*model.values(), steps, name == "policy"]
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(args)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process (default: 10)")
    parser.add_argument("--repeat", type=int, default=3, help="processes per setting and load (default: 3)")
    ns = parser.parse_args()
    model = study_defaults()
    print(f"LSTM step: {model}, {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}")
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for repeat in range(ns.repeat):
        for load in ("idle", "busy"):
            for name in SETTINGS:
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
                try:
                    run = timed(name, model, ns.steps)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                runs.setdefault((name, load), []).append(run)
                print(
                    f"  [{repeat + 1}/{ns.repeat}] {load:4} {name:9} {run['step_s']:.3f} s/step (cpu "
                    f"{run['cpu_s']:.3f} s, {run['threads']} threads, load {run['load']:.1f})",
                    flush=True,
                )

    def median(name: str, load: str, key: str = "step_s") -> float:
        return statistics.median(r[key] for r in runs[name, load])

    print(f"\nmedians over {ns.repeat} processes, {ns.steps} steps each (seconds per step)")
    print(f"{'setting':10} {'threads':>7} {'idle':>7} {'busy':>7} {'busy/idle':>9} {'idle/default':>12} "
          f"{'busy/default':>12} {'cpu idle':>8} {'cpu busy':>8}")  # fmt: skip
    for name in SETTINGS:
        idle, busy = median(name, "idle"), median(name, "busy")
        print(
            f"{name:10} {runs[name, 'idle'][0]['threads']:>7} {idle:7.3f} {busy:7.3f} {busy / idle:9.2f} "
            f"{idle / median('default', 'idle'):12.2f} {busy / median('default', 'busy'):12.2f} "
            f"{median(name, 'idle', 'cpu_s'):8.3f} {median(name, 'busy', 'cpu_s'):8.3f}"
        )


if __name__ == "__main__":
    main()
