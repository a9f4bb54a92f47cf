"""The main job: bake a study with the default answers and run its whole pipeline.

bake -> install -> synthetic inputs -> ETL -> the study's nginx on loopback (token auth)
-> read over HTTP with the fsspec mapper as Colab does -> train -> execute the Colab
notebook in a Colab-like kernel -> report. Run it with `python3 tasks.py demo`; the
server it starts is stopped on every exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bakery import LIBRARY, TEMPLATE, bake, install_study, run
from colab_env import build_colab_like_python, write_kernelspec
from servers import study_package, study_server

READ_AS_COLAB = """
import json, os, sys, time
import xarray as xr
from fsspec.implementations.http import HTTPFileSystem

store_url, name = sys.argv[1:3]
fs = HTTPFileSystem(headers={"Authorization": "Bearer " + os.environ["DATA_TOKEN"]})
ds = xr.open_zarr(fs.get_mapper(store_url), consolidated=True)
print(ds[name])
from labzarr.throughput import measure_throughput
from {package}.config import load_config
print(json.dumps(measure_throughput(load_config().store_source(), max_chunks=16)))  # $DATA_URL, $DATA_TOKEN
"""


class Steps:
    """Numbered, timed steps with one line each, numbered from the list of their titles (so the
    count printed is the count run)."""

    def __init__(self, titles: list[str]) -> None:
        self.titles, self.done, self.times = titles, 0, {}

    @contextmanager
    def step(self) -> Iterator[None]:
        """The next step of the list."""
        if self.done == len(self.titles):
            raise RuntimeError(f"a step beyond the {len(self.titles)} planned: {self.titles}")
        name = self.titles[self.done]
        self.done += 1
        print(f"\n[{self.done}/{len(self.titles)}] {name}", flush=True)
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        print(f"      done in {self.times[name]:.1f} s", flush=True)

    def finish(self) -> None:
        """Every planned step ran (a step left over is a bug of the demo, not of the study)."""
        if self.done != len(self.titles):
            raise RuntimeError(f"{self.done} of {len(self.titles)} planned steps ran: {self.titles}")


def count(n: int, noun: str) -> str:
    """'1 epoch', '5 epochs'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def epochs_note(used: int, configured: int, how: str) -> str:
    """'5 epochs (demo --epochs; study.toml: 10)': what ran, and the study's own default beside it."""
    if used == configured:
        return f"{count(used, 'epoch')} (train.epochs of study.toml)"
    return f"{count(used, 'epoch')} ({how}; study.toml: train.epochs = {configured})"


def step_titles(size: str, epochs: int | None, notebook_epochs: int | None) -> list[str]:
    """The demo's steps, in order (no notebook step when `notebook_epochs` is None): the one list
    their numbers come from."""
    titles = [
        "bake a study with the default answers",
        "install it (editable, into its own venv)",
        f"synthetic inputs ({size})",
        "ETL: validate, quantiles, categories, the series store (zarr)",
        "read over HTTP as Colab does (fsspec mapper, xr.open_zarr)",
        f"train {count(epochs, 'epoch') if epochs else 'as study.toml says'} over HTTP",
    ]
    if notebook_epochs is not None:
        titles.append(f"execute the Colab notebook in a Colab-like kernel ({count(notebook_epochs, 'epoch')})")
    return titles


BASELINE_NAMES = {
    "majority": "majority class",
    "last_step": "last step",
    "logistic": "logistic (features)",
    "gbm": "gbm (features)",
}


def scores_table(summary: dict[str, Any]) -> list[str]:
    """The model's and every baseline's test accuracy and macro-F1, one line each (same windows)."""
    rows = {summary["settings"]["model"].upper(): summary["test"]}
    rows.update({BASELINE_NAMES.get(name, name): b for name, b in summary["baselines"].items()})
    lines = [f"  {'':<20} {'accuracy':>8}  {'macro-F1':>8}"]
    lines += [f"  {name:<20} {row['accuracy']:8.3f}  {row['macro_f1']:8.3f}" for name, row in rows.items()]
    return lines


def gate(summary: dict[str, Any]) -> tuple[bool, str]:
    """Whether the model beats every baseline on test macro-F1, and a sentence saying so or naming
    each baseline it lost to (the demo exits non-zero then)."""
    model, f1 = summary["settings"]["model"].upper(), summary["test"]["macro_f1"]
    lost = {name: b["macro_f1"] for name, b in summary["baselines"].items() if b["macro_f1"] >= f1}
    if not lost:
        return True, f"the {model} beats every baseline on macro-F1"
    named = ", ".join(f"{name} ({value:.3f})" for name, value in lost.items())
    return False, f"the {model} (macro-F1 {f1:.3f}) does NOT beat {named}"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def execute_notebook(study: Path, workdir: Path, env: dict[str, str]) -> Path:
    """Run the study's notebook top to bottom in a Colab-like kernel; returns the executed copy."""
    import nbformat
    from nbclient import NotebookClient

    kernel_python = build_colab_like_python(workdir / "colab-env")
    kernel = write_kernelspec(workdir / "jupyter", kernel_python)
    saved = dict(os.environ)
    os.environ.update(env, JUPYTER_PATH=str(workdir / "jupyter"), MPLBACKEND="Agg")
    try:
        nb = nbformat.read(study / "notebooks" / "colab_bootstrap.ipynb", as_version=4)
        content = workdir / "content"  # like Colab's /content
        content.mkdir()
        NotebookClient(nb, kernel_name=kernel, timeout=1800, resources={"metadata": {"path": str(content)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    executed = workdir / "colab_bootstrap.executed.ipynb"
    nbformat.write(nb, executed)
    return executed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TEMPLATE / "demo-output", help="output folder (replaced)")
    # The CLI run trains as study.toml says (train.epochs of train.windows_per_epoch windows each);
    # the notebook run fewer epochs to stay fast. An override (--epochs, STUDY_EPOCHS) is printed
    # beside study.toml's value.
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs of the CLI run (default: train.epochs of study.toml)"
    )
    parser.add_argument(
        "--notebook-epochs", type=int, default=1, help="training epochs of the notebook run (default: 1)"
    )
    parser.add_argument("--size", default="small", choices=("tiny", "small", "large"), help="synthetic size")
    parser.add_argument("--skip-notebook", action="store_true", help="do not execute the notebook")
    args = parser.parse_args()

    started = time.perf_counter()
    # matplotlib's font cache (of the study's venv and of the kernel) kept between runs: built once,
    # not at every run ("generated new fontManager") when its default folder is not writable.
    matplotlib_cache = TEMPLATE / ".cache" / "matplotlib"
    matplotlib_cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", str(matplotlib_cache))
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    steps = Steps(step_titles(args.size, args.epochs, None if args.skip_notebook else args.notebook_epochs))

    with steps.step():
        study = bake(out)
        package = study_package(study)
        print(f"      {study}")
    with steps.step():
        python = install_study(study, out)

    def cli(*argv: str, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
        result = run([python, "-m", package, *argv], cwd=study, timeout=timeout, env=env)
        return result.stdout

    def cli_live(*argv: str, env: dict[str, str]) -> None:
        """A long command whose progress bars and per-epoch lines the user should see."""
        done = subprocess.run([python, "-m", package, *argv], cwd=study, env={**os.environ, **env})
        if done.returncode:
            raise SystemExit(f"{package} {argv[0]} failed with exit status {done.returncode} (see above)")

    with steps.step():
        print("      " + cli("synth", "--size", args.size).strip().replace("\n", "\n      "))
    with steps.step():
        cli("etl")
        config = json.loads(run([python, "-c", CONFIG_JSON.replace("{package}", package)], cwd=study).stdout)
        store = Path(config["store_path"])
        print(f"      {store} ({folder_size(store) / 1e6:.1f} MB on disk)")

    token = secrets.token_urlsafe(24)  # this run's secret: never printed, passed by environment only
    auth = {"DATA_TOKEN": token}
    with study_server(python, study, study / "data" / "zarr", auth_env=auth) as url:
        print(f"\n      nginx serves {study / 'data' / 'zarr'} at {url} (token auth)")
        env = {"DATA_URL": url, **auth}
        with steps.step():
            snippet = READ_AS_COLAB.replace("{package}", package)
            lines = run(
                [python, "-c", snippet, f"{url}/{store.name}", config["dataset_name"]], cwd=study, env=env
            ).stdout
            *repr_lines, speed_line = lines.strip().splitlines()
            print("      " + "\n      ".join(repr_lines[:8]))
            speed = json.loads(speed_line)
            print(f"      {speed['mb_per_s']:.1f} MB/s, {speed['cells_per_s']:,.0f} cell series/s")
        with steps.step():
            configured = config["epochs"]  # train.epochs of the study's study.toml
            print(f"      {epochs_note(args.epochs or configured, configured, 'the demo passes --epochs')}")
            results = out / "results"
            override = ["--epochs", str(args.epochs)] if args.epochs else []
            cli_live("train", "--url", url, *override, "--out", str(results), env=env)
            summary = json.loads((results / "summary.json").read_text())
        if not args.skip_notebook:
            with steps.step():
                print(f"      {epochs_note(args.notebook_epochs, configured, 'the demo sets STUDY_EPOCHS')}")
                nb_env = {
                    **env,
                    "STUDY_PIP_SOURCE": str(study),
                    "STUDY_LIBRARY_SOURCE": str(LIBRARY),
                    "STUDY_EPOCHS": str(args.notebook_epochs),
                }
                executed = execute_notebook(study, out / "notebook", nb_env)
                print(f"      {executed}")
    print("\n      server stopped; no nginx left running")
    steps.finish()

    test = summary["test"]
    print("\n" + "=" * 72)
    print("Report")
    print("=" * 72)
    print(f"study            {study}")
    print(f"store            {store} ({folder_size(store) / 1e6:.1f} MB)")
    print(f"throughput       {speed['mb_per_s']:.1f} MB/s, {speed['cells_per_s']:,.0f} cell series/s (loopback)")
    per_epoch = summary["settings"]["windows_per_epoch"] or summary["train_samples"]
    per_epoch = min(per_epoch, summary["train_samples"])
    planned = epochs_note(args.epochs or configured, configured, "demo --epochs")
    print(
        f"training         {summary['epochs_run']} of {planned} "
        f"on {summary['device']}, {per_epoch:,} of {summary['train_samples']:,} training windows per epoch, "
        f"{steps.times[steps.titles[5]]:.0f} s"
    )
    threads = summary["threads"]  # the study's CLI chose them (labzarr.train.threads): say which and why
    print(f"CPU threads      {threads['threads']}, {threads['wait_policy']} wait: {threads['reason']}")
    print(f"test ({test['samples']:,} windows, the same for the model and the baselines)")
    print("\n".join(scores_table(summary)))
    passed, verdict = gate(summary)
    print(f"                 {verdict}")
    print(f"results          {results} ({', '.join(sorted(p.name for p in results.glob('*.png')))})")
    if not args.skip_notebook:
        print(f"notebook         {executed}")
    print(f"wall time        {time.perf_counter() - started:.0f} s")
    return 0 if passed else 1


CONFIG_JSON = """
import json
from {package}.config import load_config
cfg = load_config()
print(json.dumps({"store_path": str(cfg.store_path), "dataset_name": cfg.study.dataset_name,
                  "epochs": cfg.train.epochs}))
"""

if __name__ == "__main__":
    sys.exit(main())
