"""The pinned floating-point environment's cost: fit time pinned against the CPU's own kernels.

For the baseline (params.yaml's train section, 20 epochs) and the best preset's network
(presets/best.yaml: its hidden layers, index targets; ``--best-epochs`` epochs on the fixed
training set, without its online distortions and views: the figure is the BLAS and numpy work
alone), each fit runs in a fresh process (the kernels are chosen when numpy loads) with
``MNISTFLOW_NUMERICS`` pinned and native, alternating, ``--rounds`` times. Prints a markdown
table.

Usage: python benchmarks/numerics.py [--mirror DIR] [--rounds 2] [--best-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mnistflow import numerics
from mnistflow.config import TrainConfig, config, load_params
from mnistflow.data.encode import encode_labels
from mnistflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, gunzip, parse_idx
from mnistflow.experiments.presets import apply_preset, load_preset
from mnistflow.modeling.training import fit

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "x": ("train-images-idx3-ubyte.gz", IMAGES_MAGIC),
    "y": ("train-labels-idx1-ubyte.gz", LABELS_MAGIC),
}


def settings(name: str, best_epochs: int) -> tuple[TrainConfig, str]:
    """The train section and the label encoding of ``baseline`` or ``best``."""
    params = load_params(REPO / "params.yaml")
    if name == "best":
        params = apply_preset(params, load_preset(REPO / "presets" / "best.yaml"))
        params["train"].update(
            max_iter=best_epochs, online_augment=False, lr_decay=1.0, views="none"
        )
    return config(params, "train", TrainConfig), params["encode"]["labels"]


def child(name: str, mirror: Path, best_epochs: int) -> None:
    """One fit in this process; prints its figures as one JSON line."""
    cfg, labels = settings(name, best_epochs)
    arrays = {
        key: parse_idx(gunzip((mirror / file).read_bytes(), file), file, magic)
        for key, (file, magic) in FILES.items()
    }
    X = arrays["x"].reshape(len(arrays["x"]), -1).astype("float32") / 255
    y = encode_labels(arrays["y"], labels, 10)
    result = fit(cfg, X, y)
    seen = numerics.observe()
    sys.stdout.write(
        json.dumps(
            {
                "fit_s": result.fit_time_s,
                "epochs": result.n_iter,
                "loss": result.final_loss,
                "blas": seen["blas"],
                "pinned": seen["pinned"],
                "fingerprint": seen["fingerprint"],
            }
        )
        + "\n"
    )


def main() -> None:
    """Alternate pinned and native fits of both configurations; print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", default=os.environ.get("MNISTFLOW_MIRROR"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--best-epochs", type=int, default=5)
    parser.add_argument("--child", choices=("baseline", "best"))
    args = parser.parse_args()
    if not args.mirror:
        parser.error("--mirror DIR (or MNISTFLOW_MIRROR): a folder with the MNIST .gz files")
    if args.child:
        child(args.child, Path(args.mirror), args.best_epochs)
        return
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for name in ("baseline", "best"):
            for mode in ("pinned", "native"):
                env = {**os.environ, numerics.MODE_ENV: mode}
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--mirror",
                    args.mirror,
                    "--best-epochs",
                    str(args.best_epochs),
                ]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                runs.setdefault((name, mode), []).append(json.loads(out.stdout.splitlines()[-1]))
    load = os.getloadavg()[0]
    lines = [
        f"numerics cost, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{args.rounds} rounds, load average at end {load:.1f}",
        "",
        "| network | mode | kernels | fit s (each round) | s per epoch (median) | final loss |",
        "|---|---|---|---|---:|---:|",
    ]
    per_epoch: dict[tuple[str, str], float] = {}
    for (name, mode), done in runs.items():
        per_epoch[name, mode] = statistics.median(r["fit_s"] / r["epochs"] for r in done)
        lines.append(
            f"| {name} ({done[0]['epochs']} epochs) | {mode} | {done[0]['blas']} | "
            f"{', '.join(format(r['fit_s'], '.1f') for r in done)} | {per_epoch[name, mode]:.2f} | "
            f"{done[0]['loss']:.8f} |"
        )
    lines.append("")
    for name in ("baseline", "best"):
        ratio = per_epoch[name, "pinned"] / per_epoch[name, "native"]
        lines.append(f"- {name}: pinned / native time per epoch = {ratio:.2f}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
