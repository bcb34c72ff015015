"""The grid file of an ablation: which script, base config, seeds, budget, metric, baseline and arms.

    script: mnist/train.py            # any script that keeps the training contract
    base_config: mnist/configs/cnn.yaml
    seeds: [0, 1, 2]                  # --seeds replaces this list
    budget: {samples: 110000}         # exactly one of samples | steps | flops
    metric: best_val_acc              # summary.json key compared, higher is better
    baseline: base                    # name of the baseline arm
    overrides: {train.log_every: 50}  # applied to every arm, before the arm's own
    arms:
      base: {}
      lr_high: {train.lr: 0.01}
      two_procs: {_nproc: 2, train.batch_size: 256}   # _nproc is a runner option, not a config key

`load_grid` checks everything it can without running the script and raises UserError naming the
key and the fix. Whether the script accepts each arm's config is checked later by a probe run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError

GRID_KEYS = ("script", "base_config", "seeds", "budget", "metric", "baseline", "overrides", "arms")
BUDGET_KINDS = ("samples", "steps", "flops")
# Keys that the runner sets for every run; a grid that sets them would break the equal budget or the layout.
RUNNER_KEYS = {
    "run.name": "the runner names runs <arm>_seed<k>",
    "run.seed": "use seeds or --seeds",
    "run.results_dir": "runs go to OUT/runs/<arm>/seed<k>",
    "run.resume": "the runner resumes dead runs itself",
    "train.max_steps": "the budget sets it",
    "train.schedule_steps": "the budget sets it",
    "system.threads": "use --threads-per-run",
}
RUNNER_OPTIONS = ("_nproc",)
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Arm:
    """One arm: its overrides, and the budget fields that the runner fills in after the probe run."""

    name: str
    overrides: dict[str, Any]  # dotted key -> value, grid overrides first, then the arm's own
    nproc: int = 1
    batch_size: int | None = None  # train.batch_size from base config, grid overrides and arm, if set there
    steps: int = 0
    flops_per_step: float = 0.0
    global_batch: int = 0


@dataclass
class Grid:
    """A checked grid file; `mapping` is the parsed YAML, kept to compare with an earlier run's copy."""

    path: Path
    text: str
    mapping: dict
    script: Path
    base_config: Path
    seeds: list[int]
    budget_kind: str
    budget: int
    metric: str
    baseline: str
    arms: list[Arm] = field(default_factory=list)


def load_grid(path: str, seeds_override: list[int] | None) -> Grid:
    """Read and check the grid file; every problem found here is a UserError naming the key."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"grid file {path} not found; pass an existing YAML file with --grid")
    text = file.read_text()
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise UserError(f"grid file {path} is not valid YAML ({first_line}); fix the file") from None
    if not isinstance(mapping, dict):
        raise UserError(f"grid file {path} must be a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = [k for k in mapping if k not in GRID_KEYS]
    if unknown:
        raise UserError(f"grid key {unknown[0]!r} in {path} is unknown; valid keys: {', '.join(GRID_KEYS)}")
    for key in ("script", "base_config", "budget", "baseline", "arms"):
        if key not in mapping:
            raise UserError(f"grid file {path} has no {key!r}; add it (see cifar/ablations/mnist_lr.yaml)")

    script = _existing_file(mapping["script"], "script", path)
    base_config = _existing_file(mapping["base_config"], "base_config", path)
    seeds = seeds_override if seeds_override is not None else _seeds(mapping.get("seeds"), path)
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError(f"seeds {seeds} must be distinct integers >= 0")
    budget_kind, budget = _budget(mapping["budget"], path)
    metric = mapping.get("metric", "best_val_acc")
    if not isinstance(metric, str) or not metric:
        raise UserError(f"grid key metric in {path} must be a summary.json key such as best_val_acc, got {metric!r}")

    arms_map = mapping["arms"]
    if not isinstance(arms_map, dict) or not arms_map:
        raise UserError(f"grid key arms in {path} must be a non-empty mapping of arm name to overrides")
    baseline = mapping["baseline"]
    if baseline not in arms_map:
        raise UserError(f"baseline {baseline!r} is not among the arms ({', '.join(map(str, arms_map))}); "
                        f"name one of them or add an arm called {baseline!r}")
    shared = _overrides(mapping.get("overrides"), "overrides", path)
    base_batch = _base_batch_size(base_config)
    arms = []
    for name, own in arms_map.items():
        if not isinstance(name, str) or not ARM_NAME.match(name):
            raise UserError(f"arm name {name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
        merged = {**shared, **_overrides(own, f"arms.{name}", path)}
        nproc = merged.pop("_nproc", 1)
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise UserError(f"_nproc of arm {name} is {nproc!r}, must be an integer >= 1")
        batch = merged.get("train.batch_size", base_batch)
        arms.append(Arm(name=name, overrides=merged, nproc=nproc, batch_size=None if batch is None else int(batch)))
    return Grid(path=file, text=text, mapping=mapping, script=script, base_config=base_config, seeds=seeds,
                budget_kind=budget_kind, budget=budget, metric=metric, baseline=baseline, arms=arms)


def _existing_file(value: Any, key: str, grid_path: str) -> Path:
    if not isinstance(value, str) or not Path(value).is_file():
        raise UserError(f"grid key {key} in {grid_path} is {value!r}, which is not an existing file; "
                        f"paths are relative to the current directory, so run from the repository root")
    return Path(value)


def _seeds(value: Any, grid_path: str) -> list[int]:
    if value is None:
        raise UserError(f"grid file {grid_path} has no seeds; add `seeds: [0, 1, 2]` or pass --seeds")
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise UserError(f"grid key seeds in {grid_path} must be a non-empty list of integers, got {value!r}")
    return value


def _budget(value: Any, grid_path: str) -> tuple[str, int]:
    if not isinstance(value, dict) or len(value) != 1:
        raise UserError(f"grid key budget in {grid_path} must have exactly one of {', '.join(BUDGET_KINDS)}, "
                        f"for example budget: {{samples: 110000}}; got {value!r}")
    kind, amount = next(iter(value.items()))
    if kind not in BUDGET_KINDS:
        raise UserError(f"budget kind {kind!r} in {grid_path} is unknown; valid kinds: {', '.join(BUDGET_KINDS)}")
    # PyYAML reads 2e12 (no dot) as a string, so numeric strings are accepted.
    try:
        number = float(amount)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(amount, bool) or not math.isfinite(number) or number < 1 or number != int(number):
        raise UserError(f"budget {kind} in {grid_path} is {amount!r}, must be a positive whole number")
    return kind, int(number)


def _overrides(value: Any, where: str, grid_path: str) -> dict[str, Any]:
    """Check a {section.key: value} mapping and return a copy; _nproc passes through for the caller."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"grid key {where} in {grid_path} must be a mapping of section.key to value, got {value!r}")
    checked = {}
    for key, item in value.items():
        if key in RUNNER_OPTIONS:
            checked[key] = item
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise UserError(f"{where}.{key} is not a runner option; valid runner options: {', '.join(RUNNER_OPTIONS)}")
        if key.count(".") != 1:
            raise UserError(f"{where} key {key!r} must have the form section.key, for example train.lr")
        if key in RUNNER_KEYS:
            raise UserError(f"{where} sets {key}, which the runner controls ({RUNNER_KEYS[key]}); remove it")
        if isinstance(item, (dict, list)) or item is None:
            raise UserError(f"{where}.{key} is {item!r}; a config value must be a number, a string or a boolean")
        checked[key] = item
    return checked


def _base_batch_size(base_config: Path) -> int | None:
    try:
        mapping = yaml.safe_load(base_config.read_text())
    except yaml.YAMLError:
        return None  # the probe run reports the syntax error in the script's own words
    train = mapping.get("train") if isinstance(mapping, dict) else None
    return train.get("batch_size") if isinstance(train, dict) else None


def override_args(overrides: dict[str, Any]) -> list[str]:
    """Turn {section.key: value} into --section.key=value, with YAML booleans spelled true/false."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        args.append(f"--{key}={text}")
    return args
