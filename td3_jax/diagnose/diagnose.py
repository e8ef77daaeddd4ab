"""`td3-jax diagnose PATH`: is this TD3 run healthy? Reads TensorBoard event files.

PATH is a run directory or an event file, written by td3_jax or another TD3
trainer (the original PyTorch system, Stable-Baselines3, CleanRL). The report
is the seed analysis' success-criteria table with measured values, a verdict
(healthy / diverging / exploded / not enough data) with the step where the
divergence began, and the likely causes. Exit code: 0 healthy, 1 otherwise,
2 unreadable input. The analysis itself lives in `td3_jax.diagnose.report`.

Everything in this module is host-side I/O: event files, YAML, JSON, PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
from pathlib import Path

import numpy as np
import yaml

from td3_jax.diagnose.report import Diagnosis, diagnose_scalars
from td3_jax.diagnose.signals import Criteria, Series, fmt, resolve_signals
from td3_jax.errors import UserError, check_output_file
from td3_jax.training.config import read_yaml

EVENT_FILE_MARKER = "tfevents"
CONFIG_FILE = "config.yaml"
DIAGNOSIS_JSON = "diagnosis.json"
DIAGNOSIS_TEXT = "diagnosis.txt"


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the diagnose arguments."""
    parser.add_argument("path", metavar="PATH", help="run directory or TensorBoard event file")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON instead of text")
    parser.add_argument(
        "--plot", metavar="OUT.png",
        help="draw actor loss, Q, gradient norms and episode length; a directory gets <run name>.png inside it",
    )
    parser.add_argument(
        "--criteria", metavar="FILE",
        help="YAML file overriding thresholds (keys: " + ", ".join(f.name for f in dataclasses.fields(Criteria)) + ")",
    )


def run(args: argparse.Namespace) -> int:
    """Diagnoses one run; returns 0 healthy, 1 otherwise (bad input raises UserError, exit 2)."""
    criteria = load_criteria(args.criteria) if args.criteria else Criteria()
    plot = plot_path(args.plot, args.path) if args.plot else None
    scalars = read_scalars(args.path)
    diagnosis = diagnose_scalars(scalars, criteria, read_config_norms(args.path), str(args.path))
    print(json.dumps(diagnosis.to_dict(), indent=2) if args.json else format_text(diagnosis))
    if plot:
        plot_scalars(scalars, diagnosis, plot)
    return diagnosis.exit_code


def plot_path(plot: str, run_path: str) -> Path:
    """Where `--plot` writes: the file named, or `<run name>.png` inside a directory named.

    The run name (the run directory's name, or the event file's folder's) lets
    several runs be plotted into one folder.

    Raises:
      UserError: the file could not be written, or matplotlib cannot write its format.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(plot)
    if out.is_dir():
        run = Path(run_path).resolve()
        out = out / f"{(run if run.is_dir() else run.parent).name}.png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix and out.suffix[1:].lower() not in formats:
        raise UserError(f"--plot {plot}: cannot write {out.suffix} files; use one of .{', .'.join(sorted(formats))}")
    return check_output_file(out, "--plot")


def load_criteria(path: str | os.PathLike) -> Criteria:
    """Reads a flat YAML mapping of `Criteria` fields; unknown keys or wrong types raise UserError."""
    raw = read_yaml(path, "criteria file") or {}
    if not isinstance(raw, dict):
        raise UserError(f"criteria file {path} must hold a mapping of threshold: value")
    fields = {field.name: field for field in dataclasses.fields(Criteria)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"criteria file {path}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(fields)}"
        )
    values = {}
    for key, value in raw.items():
        nullable = key.endswith("_max_norm")
        if value is None and nullable:
            values[key] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            values[key] = int(value) if key == "min_learning_points" else float(value)
        else:
            raise UserError(f"criteria file {path}: {key} must be a positive number, got {value!r}")
    return Criteria(**values)


def find_event_files(path: str | os.PathLike) -> list[Path]:
    """Event files of one run: PATH itself, the files directly in PATH, else those of its one sub-folder.

    Raises:
      UserError: PATH is missing, holds no event file, or holds several runs.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give a run directory or an event file")
    direct = sorted(p for p in path.iterdir() if p.is_file() and EVENT_FILE_MARKER in p.name)
    if direct:
        return direct
    nested = sorted(p for p in path.rglob(f"*{EVENT_FILE_MARKER}*") if p.is_file())
    folders = sorted({p.parent for p in nested})
    if not folders:
        raise UserError(f"no TensorBoard event file (*{EVENT_FILE_MARKER}*) in {path}")
    if len(folders) > 1:
        listed = ", ".join(str(folder) for folder in folders[:5])
        raise UserError(f"{path} holds {len(folders)} runs; diagnose one of them: {listed}")
    return [p for p in nested if p.parent == folders[0]]


def read_scalars(path: str | os.PathLike) -> dict[str, Series]:
    """All scalar tags of one run, read with tensorboard's EventAccumulator.

    Several event files of one run (a resumed run) are merged in step order;
    a step written twice keeps its last value.

    Raises:
      UserError: no readable event file, or no scalar in it.
    """
    from tensorboard.backend.event_processing import event_accumulator

    collected: dict[str, dict[int, float]] = {}
    for file in find_event_files(path):
        check_event_file(file)
        accumulator = event_accumulator.EventAccumulator(str(file), size_guidance={event_accumulator.SCALARS: 0})
        try:
            accumulator.Reload()
        except Exception as error:  # the reader raises several types on corrupt files
            raise UserError(f"cannot read event file {file}: {type(error).__name__}: {error}".splitlines()[0]) from None
        for tag in accumulator.Tags().get(event_accumulator.SCALARS, []):
            points = collected.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                points[int(event.step)] = float(event.value)
    if not collected:
        raise UserError(f"no scalar values in the event file(s) of {path}; is it a TensorBoard run?")
    scalars = {}
    for tag, points in collected.items():
        steps = np.array(sorted(points), dtype=np.int64)
        scalars[tag] = Series(steps, np.array([points[s] for s in steps], dtype=np.float64))
    return scalars


def check_event_file(file: Path) -> None:
    """Checks the record framing of an event file: each record's length must pass its checksum.

    tensorboard's reader stops silently at the first bad record, so a corrupt
    file would pass for a short run. A last record cut short is accepted: a
    writer still running, or killed mid-write, leaves one, and the records
    before it are sound. Reads only the 12-byte record headers.

    Raises:
      UserError: a record header fails its checksum (garbage, or not an event file).
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    size = file.stat().st_size
    offset = 0
    with open(file, "rb") as handle:
        while offset + 12 <= size:  # TFRecord: u64 length, u32 masked CRC of it, data, u32 CRC of data
            handle.seek(offset)
            header = handle.read(12)
            if masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                if offset == 0:
                    raise UserError(
                        f"{file} is not a TensorBoard event file (its first record is unreadable); "
                        "remove it or pass the run's own event file"
                    )
                raise UserError(
                    f"event file {file} is corrupt at byte {offset} (a record fails its checksum); "
                    "diagnose a copy made before the damage, or move the file away to diagnose the run's other files"
                )
            offset += 12 + struct.unpack("<Q", header[:8])[0] + 4


def read_config_norms(path: str | os.PathLike) -> dict[str, float] | None:
    """Clip thresholds from the run's config.yaml (algorithm.gradient_clipping), or None if absent."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None
    clipping = ((data or {}).get("algorithm") or {}).get("gradient_clipping") if isinstance(data, dict) else None
    if not isinstance(clipping, dict):
        return None
    norms = {net: clipping.get(f"{net}_max_norm") for net in ("actor", "critic")}
    return {net: float(v) for net, v in norms.items() if isinstance(v, (int, float))} or None


def diagnose_run(path: str | os.PathLike, criteria: Criteria = Criteria()) -> Diagnosis:
    """Reads and diagnoses one run (host-side). The training loop calls this at the end of a run.

    Args:
      path: run directory or event file; the writer must have been flushed.
      criteria: thresholds.

    Raises:
      UserError: the input cannot be read.
    """
    return diagnose_scalars(read_scalars(path), criteria, read_config_norms(path), str(path))


def write_diagnosis(diagnosis: Diagnosis, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes diagnosis.json and diagnosis.txt into the run directory (host-side); returns their paths."""
    run_dir = Path(run_dir)
    json_path, text_path = run_dir / DIAGNOSIS_JSON, run_dir / DIAGNOSIS_TEXT
    json_path.write_text(json.dumps(diagnosis.to_dict(), indent=2) + "\n")
    text_path.write_text(format_text(diagnosis) + "\n")
    return json_path, text_path


def format_text(diagnosis: Diagnosis) -> str:
    """The human-readable report: verdict, criteria table, causes, signals."""
    lines = [f"td3-jax diagnose: {diagnosis.path}", f"Verdict: {diagnosis.verdict.upper()}: {diagnosis.summary}", ""]
    headers = ("criterion", "target", "measured", "status")
    cells = [(row.criterion, row.target, row.measured, row.status) for row in diagnosis.rows]
    widths = [max(len(header), *(len(cell[i]) for cell in cells)) for i, header in enumerate(headers)]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |" for cell in cells]
    norms = ", ".join(f"{net} {fmt(v['value'])} ({v['source']})" for net, v in diagnosis.max_norms.items())
    lines += ["", f"max_norm: {norms}"]
    if diagnosis.learning_rates:
        rates = ", ".join(
            f"{tag} {fmt(a)}" + ("" if a == b else f" -> {fmt(b)}") for tag, (a, b) in diagnosis.learning_rates.items()
        )
        lines.append(f"learning rates: {rates}")
    headings = (("likely", "Likely causes"), ("possible", "Possible causes"), ("unlikely", "Checked, not implicated"))
    for likelihood, heading in headings:
        found = [cause for cause in diagnosis.causes if cause.likelihood == likelihood]
        if found:
            lines += ["", f"{heading}:"]
            lines += [f"  - {cause.title}: {cause.evidence}" for cause in found]
    used = [f"{name}={tag}" for name, tag in diagnosis.signals.items() if tag is not None]
    lines += ["", f"signals found ({len(used)}): {', '.join(used)}"]
    lines.append(f"signals missing ({len(diagnosis.missing)}): {', '.join(diagnosis.missing) or 'none'}")
    return "\n".join(lines)


def plot_scalars(scalars: dict[str, Series], diagnosis: Diagnosis, out: str | os.PathLike) -> Path:
    """Draws the key curves into a PNG with matplotlib's Agg canvas (host-side); returns the path.

    Panels: actor loss (symlog); Q on replay actions and at the policy action
    (symlog); pre/post-clip gradient norms with max_norm lines (log); episode length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series, tags = resolve_signals(scalars)
    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2).ravel()
    panels = (
        (axes[0], "actor loss", "symlog", ("actor_loss",)),
        (axes[1], "Q: replay actions vs policy action", "symlog", ("replay_q", "replay_q2", "policy_q")),
        (axes[2], "gradient norms", "log", ("actor_grad_before", "actor_grad_after", "critic_grad_before",
                                            "critic_grad_after", "actor_cnn_grad_after", "critic_cnn_grad_after")),
        (axes[3], "episode length", "linear", ("episode_length",)),
    )
    for ax, title, scale, names in panels:
        drawn = [name for name in names if name in series]
        for name in drawn:
            ax.plot(series[name].steps, series[name].values, label=tags[name], linewidth=1)
        ax.set_title(title if drawn else f"{title} (missing)")
        ax.set_yscale(scale)
        ax.set_xlabel("step (episode index for some trainers' episode tags)" if title == "episode length" else "step")
        if drawn:
            ax.legend(fontsize=7)
    for net, style in (("actor", "--"), ("critic", ":")):
        norm = diagnosis.max_norms[net]
        axes[2].axhline(norm["value"], color="black", linestyle=style, linewidth=1,
                        label=f"{net} max_norm {fmt(norm['value'])}")
    axes[2].legend(fontsize=7)
    if diagnosis.divergence_step is not None:
        for ax in axes[:3]:
            ax.axvline(diagnosis.divergence_step, color="red", linewidth=0.8)
    figure.suptitle(f"{diagnosis.verdict}: {Path(diagnosis.path).name}")
    out = Path(out)
    figure.savefig(out, dpi=100)
    return out
