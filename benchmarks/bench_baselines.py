#!/usr/bin/env python3
"""Baseline classifiers benchmark: fitting and predicting the feature-based baselines (gradient
boosting and logistic regression, `labzarr.train.classifiers`) per OpenMP setting, side by side.
Prints figures; asserts nothing (speed goals are not tests).

    .venv/bin/python benchmarks/bench_baselines.py [--samples 20000] [--repeat 3]

The data: `--samples` windows of 10 engineered features (what 2 store features give: last value,
3 trailing means, trend) and 11 classes that follow the first feature with noise, as drought
categories follow an index; predicted on as many windows. Each setting runs in a fresh process
(libgomp reads its environment once), `--repeat` times interleaved; medians of the wall seconds:

  library   labzarr's fit as it is (OpenMP at one thread inside it), scikit-learn's predict;
  default   the fit at scikit-learn's own thread count: one OpenMP thread per core;

each with libgomp's default (spinning) wait and with OMP_WAIT_POLICY=passive, the policy that
`labzarr.train.threads` sets for torch in every training process. What bounds the figures: the
CPU. Gradient boosting runs many small OpenMP regions per tree (11 trees a round); with passive
waits each region wakes sleeping threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

RUN = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from labzarr.train import classifiers
samples, library = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.normal(size=(2 * samples, 10)).astype(np.float32)
y = np.clip((3 * x[:, 0] + 5 + rng.normal(size=2 * samples)).round(), 0, 10).astype(np.int64)
train, test = (x[:samples], y[:samples]), x[samples:]
threads = classifiers.ONE_OPENMP_THREAD
for name in classifiers.CLASSIFIERS:  # scikit-learn's imports, before the clock starts
    classifiers.make(name)
out = {}
for name in classifiers.CLASSIFIERS:
    if not library:  # scikit-learn's default thread count inside labzarr's fit
        classifiers.ONE_OPENMP_THREAD = {"limits": None, "user_api": "openmp"}
    started = time.perf_counter()
    model = classifiers.fit(name, train, class_weights=np.ones(11), seed=0)
    fitted = time.perf_counter()
    codes = model.predict(test)
    out[name] = {"fit": fitted - started, "predict": time.perf_counter() - fitted, "codes": int(codes.sum())}
    classifiers.ONE_OPENMP_THREAD = threads
print(json.dumps(out))
"""
SETTINGS = {
    "library": (True, {}),
    "default": (False, {}),
    "library passive": (True, {"OMP_WAIT_POLICY": "passive"}),
    "default passive": (False, {"OMP_WAIT_POLICY": "passive"}),
}


def run(samples: int, library: bool, env: dict[str, str]) -> dict[str, dict[str, float]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    done = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps([samples, library])],
        env={**base, **env}, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000, help="windows fitted on (FIT_SAMPLES of a study)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeat):
        for name, (library, env) in SETTINGS.items():
            runs[name].append(run(args.samples, library, env))
    print(f"{args.samples:,} windows fitted and predicted, {os.cpu_count()} cores, median of {args.repeat}")
    print(f"{'setting':<18}{'classifier':<11}{'fit s':>8}{'predict s':>11}{'fit / library':>15}  same codes")
    for name in SETTINGS:
        for classifier in runs[name][0]:
            fit = statistics.median(r[classifier]["fit"] for r in runs[name])
            predict = statistics.median(r[classifier]["predict"] for r in runs[name])
            base = statistics.median(r[classifier]["fit"] for r in runs["library"])
            same = {r[classifier]["codes"] for r in runs[name]} == {runs["library"][0][classifier]["codes"]}
            print(
                f"{name:<18}{classifier:<11}{fit:>8.2f}{predict:>11.3f}{fit / base:>14.2f}x  {'yes' if same else 'NO'}"
            )


if __name__ == "__main__":
    main()
