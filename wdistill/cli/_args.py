"""argparse types shared by the command modules: each turns a bad value into argparse's own
one-line usage error."""
from __future__ import annotations

import argparse

import yaml


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def input_size(text: str) -> tuple[int, int, int]:
    """C,H,W, e.g. 3,224,224."""
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give C,H,W, e.g. 3,224,224") from None
    return c, h, w


def yaml_mapping(text: str) -> dict:
    """A YAML mapping on one line, e.g. '{width: 2}'."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a YAML mapping, e.g. '{{width: 2}}'")
    return value


def add_config_args(s: argparse.ArgumentParser, what: str = "YAML run config, or a shipped preset name "
                    "(`wdistill list --presets`)") -> None:
    """CONFIG and the key=value overrides every config-taking command accepts."""
    s.add_argument("config", help=what)
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 loss.1.T=2")
