"""Typed configuration: dataclass defaults, then a YAML file, then dotted command-line overrides.

A topic declares its config as a dataclass whose fields are section dataclasses (run, train,
system, model, data, ...). `parse_config` fills it in this order, later sources winning:

    defaults in code  <  --config FILE.yaml  <  --section.key=value (or --section.key value)

Unknown sections and keys, wrong types and values outside a field's choices raise UserError with
the key, the expected type and the valid keys. A field's help text and choices live in its
metadata: `field(default=..., metadata={"help": "...", "choices": (...)})`.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from common.errors import UserError

_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


@dataclass
class RunConfig:
    name: str = field(default="run", metadata={"help": "run name; the run directory is <results_dir>/<name>_<YYYYmmdd-HHMMSS>"})
    seed: int = field(default=0, metadata={"help": "base seed; each rank uses seed + rank"})
    results_dir: str = field(default="results", metadata={"help": "folder that holds run directories"})
    resume: str = field(default="", metadata={"help": "run directory (or checkpoint file) to continue from its checkpoints/last.pt"})


@dataclass
class SystemConfig:
    device: str = field(default="auto", metadata={"help": "auto picks cuda, then mps, then cpu", "choices": ("auto", "cpu", "cuda", "mps")})
    dtype: str = field(default="float32", metadata={"help": "autocast dtype; float16 adds a gradient scaler and needs CUDA", "choices": ("float32", "bfloat16", "float16")})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per rank (0 loads in the main process)"})
    compile: bool = field(default=False, metadata={"help": "wrap the model in torch.compile"})
    threads: int = field(default=0, metadata={"help": "torch intra-op threads per process; 0 keeps torch's default (torchrun sets 1)"})
    dist_timeout_s: int = field(default=300, metadata={"help": "seconds a collective waits for a missing rank before the job fails"})
    peak_tflops: float = field(default=0.0, metadata={"help": "peak TFLOP/s for MFU; 0 measures a matmul on CPU or looks up the GPU"})


def field_type(cls: type, name: str) -> type:
    """Resolve the annotation of a dataclass field (annotations are strings under PEP 563)."""
    return typing.get_type_hints(cls)[name]


def _type_name(tp: type) -> str:
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(tp, str(tp))


def coerce_value(key: str, value: Any, tp: type, from_cli: bool) -> Any:
    """Convert a YAML or command-line value to the field type, or raise UserError naming the key."""

    def wrong() -> UserError:
        # Command-line values are always strings, so their type carries no information. YAML values have real types.
        got = f"{value!r}" if from_cli else f"{value!r} ({type(value).__name__})"
        return UserError(f"config key {key} expects {_type_name(tp)}, got {got}; fix the value in the YAML file or the override")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and (from_cli or value.lower() in _TRUE_WORDS | _FALSE_WORDS):
            word = value.lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and from_cli:
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise wrong() from None
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `1e-3` (no dot) as a string, so numeric strings are accepted from YAML too.
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        raise wrong()
    raise TypeError(f"config field {key} has unsupported type {tp!r}")


def _section(cfg: Any, name: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    if name not in names:
        raise UserError(f"config section {name!r} is unknown; valid sections: {', '.join(names)}")
    return getattr(cfg, name)


def set_key(cfg: Any, dotted: str, value: Any, from_cli: bool) -> None:
    """Set `section.key` on cfg after checking the key, the type and the choices."""
    if dotted.count(".") != 1:
        raise UserError(f"config key {dotted!r} must have the form section.key, for example train.lr")
    section_name, key = dotted.split(".")
    section = _section(cfg, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise UserError(
            f"config key {dotted} is unknown; valid keys in {section_name}: {', '.join(fields)}"
        )
    tp = field_type(type(section), key)
    converted = coerce_value(dotted, value, tp, from_cli)
    choices = fields[key].metadata.get("choices")
    if choices is not None and converted not in choices:
        raise UserError(
            f"config key {dotted} must be one of {', '.join(map(str, choices))}, got {converted!r}"
        )
    setattr(section, key, converted)


def apply_mapping(cfg: Any, mapping: Any, source: str) -> None:
    """Apply a {section: {key: value}} mapping read from YAML."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        raise UserError(f"config file {source} must be a mapping of sections, got {type(mapping).__name__}")
    for section_name, values in mapping.items():
        _section(cfg, str(section_name))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(
                f"config section {section_name} in {source} must be a mapping of keys, got {values!r}"
            )
        for key, value in values.items():
            set_key(cfg, f"{section_name}.{key}", value, from_cli=False)


def load_yaml(path: str) -> Any:
    """Read a YAML file with safe_load, turning missing files and syntax errors into UserError."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path} not found; pass an existing file with --config")
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "syntax error"
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML ({problem}{where}); fix the file") from None


def format_help(cfg_cls: type, prog: str, description: str) -> str:
    """List every key with its type, default and help text."""
    defaults = cfg_cls()
    lines = [
        f"usage: {prog} [--config FILE.yaml] [--section.key=value ...]",
        "",
        description.strip(),
        "",
        "Values come from the defaults below, then the YAML file, then the overrides (last wins).",
        "",
        "  -h, --help            show this message and exit",
        "  --config FILE.yaml    YAML file with the sections below",
    ]
    for section_field in dataclasses.fields(defaults):
        section = getattr(defaults, section_field.name)
        lines.append("")
        lines.append(f"{section_field.name}:")
        for f in dataclasses.fields(section):
            tp = _type_name(field_type(type(section), f.name))
            default = getattr(section, f.name)
            choices = f.metadata.get("choices")
            help_text = f.metadata.get("help", "")
            if choices:
                help_text += f" (one of: {', '.join(map(str, choices))})"
            option = f"--{section_field.name}.{f.name} {tp.upper()}"
            lines.append(f"  {option:34s} default {default!r}")
            if help_text:
                lines.append(f"        {help_text}")
    return "\n".join(lines) + "\n"


def parse_config(cfg_cls: type, argv: Sequence[str], prog: str, description: str = "") -> Any:
    """Build cfg_cls from defaults, `--config FILE`, then dotted overrides in argv."""
    config_path = None
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            sys.stdout.write(format_help(cfg_cls, prog, description))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UserError(f"argument {arg!r} is not an option; use --config FILE or --section.key=value")
        name, has_value, value = arg[2:].partition("=")
        if not has_value:
            if i + 1 >= len(args):
                raise UserError(f"option --{name} needs a value; use --{name}=VALUE")
            value = args[i + 1]
            i += 1
        if name == "config":
            config_path = value
        else:
            overrides.append((name, value))
        i += 1

    cfg = cfg_cls()
    resume = dict(overrides).get("run.resume")
    if config_path is None and resume:
        # Resuming without --config continues with the config the run was started with.
        saved = Path(resume) / "config.yaml" if Path(resume).is_dir() else Path(resume).parent.parent / "config.yaml"
        if saved.is_file():
            config_path = str(saved)
    if config_path is not None:
        apply_mapping(cfg, load_yaml(config_path), config_path)
    for name, value in overrides:
        set_key(cfg, name, value, from_cli=True)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cfg_cls: type, mapping: dict) -> Any:
    """Rebuild a config from config_to_dict output (for example a run's config.yaml)."""
    cfg = cfg_cls()
    apply_mapping(cfg, mapping, "saved config")
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
