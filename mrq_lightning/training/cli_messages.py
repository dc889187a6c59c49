"""What the command line says: MR.Q's short ``--help`` and one-line parse errors with a did-you-mean.

Why by hand: LightningCLI's ``fit --help`` is jsonargparse's full listing (about 580 lines, Lightning's trainer flags
first; MR.Q's own options only appear under ``--model.help`` / ``--data.help``), and its parse errors print the
whole usage (about 60 lines) before a nested message. Both stay available (``--help-all``); this module builds the
short versions from the classes' own signatures and docstrings, so they cannot drift from the code.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable

__all__ = ["HELP_ALL", "option_groups", "one_line_error", "short_help"]

HELP_ALL = "--help-all"

# Trainer options worth listing in the short help (the rest: --help-all).
COMMON_TRAINER_OPTIONS = {
    "accelerator": "cpu, gpu or auto",
    "devices": "number of devices (DDP when > 1; see configs/overlays/ddp.yaml)",
    "precision": "32-true (default) or bf16-mixed",
    "default_root_dir": "where logs/ and checkpoints go (default: the current directory)",
    "logger": "a Lightning logger (default TensorBoard under logs/mrq/version_<k>)",
}
TOP_LEVEL_OPTIONS = {
    "config": "YAML config: a preset (configs/*.yaml) and overlays, in order",
    "seed_everything": "the run's seed (torch, numpy, python and the environments)",
    "ckpt_path": "checkpoint to resume (fit) or evaluate (test): a .ckpt file, or `last`",
    "print_config": "print the resolved configuration and exit",
}


def _docstring_args(cls) -> dict[str, str]:
    """``name -> first sentence`` from a Google-style ``Args:`` section (``a, b: text`` documents both)."""
    doc = inspect.getdoc(cls) or ""
    if "Args:" not in doc:
        return {}
    found: dict[str, str] = {}
    current: list[str] = []
    for line in doc.split("Args:", 1)[1].splitlines():
        match = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                found[name] = match.group(2)
        elif line.startswith("        ") and current:
            for name in current:
                found[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return {name: re.split(r"(?<=\.)\s", text, maxsplit=1)[0] for name, text in found.items()}


def _signature_defaults(cls) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def option_groups(groups: dict[str, type]) -> dict[str, list[str]]:
    """``group -> valid option names`` of each configurable class (``model -> [batch_size, ...]``)."""
    return {group: list(_signature_defaults(cls)) for group, cls in groups.items()}


def short_help(subcommand: str, groups: dict[str, type], presets: Iterable[str]) -> str:
    """MR.Q's options first, with defaults and a line each; Lightning's full listing is behind ``--help-all``."""
    lines = [
        f"usage: python -m mrq_lightning {subcommand} --config configs/<preset>.yaml [--config OVERLAY.yaml] [options]",
        "",
        "Train MR.Q (fit) or evaluate a checkpoint (test). Presets: " + ", ".join(presets) + ".",
        "Every option is also a YAML key (`--model.batch_size 128` = model: init_args: batch_size: 128).",
        "",
    ]
    for key, text in TOP_LEVEL_OPTIONS.items():
        lines.append(f"  --{key:<34} {text}")
    for group, cls in groups.items():
        docs = _docstring_args(cls)
        lines += ["", f"{group} ({cls.__name__}):"]
        for name, default in _signature_defaults(cls).items():
            shown = "" if default is inspect.Parameter.empty else f" (default {default!r})"
            lines.append(f"  --{group}.{name:<{32 - len(group)}} {docs.get(name, '')}{shown}".rstrip())
    lines += ["", "trainer (most used; Lightning's Trainer):"]
    for name, text in COMMON_TRAINER_OPTIONS.items():
        lines.append(f"  --trainer.{name:<26} {text}")
    lines += [
        "",
        f"All options, Lightning's trainer flags included: python -m mrq_lightning {subcommand} {HELP_ALL}",
        "",
    ]
    return "\n".join(lines)


def _did_you_mean(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f"; did you mean --{close[0]}?" if close else ""


def _all_keys(groups: dict[str, list[str]], extra: Iterable[str]) -> list[str]:
    return [f"{group}.{name}" for group, names in groups.items() for name in names] + list(extra)


def one_line_error(message: str, groups: dict[str, list[str]], extra_keys: Iterable[str], subcommand: str) -> str:
    """Turn a (multi-line, nested) jsonargparse parse error into one line naming the option and the fix."""
    valid = _all_keys(groups, extra_keys)
    help_hint = f"(python -m mrq_lightning {subcommand or 'fit'} --help lists the options)"
    group = re.search(r'Parser key "(\w+)"', message)
    group_name = group.group(1) if group else ""
    unknown = re.search(r"Option '([\w.]+)' is not accepted", message)
    group_option = re.search(r"(?:Group|Subcommand) '([\w.]+)' does not accept (?:nested key|option) '([\w.]+)'", message)
    if group_option:  # a misspelled key in a YAML file
        group_name, key = group_option.group(1), group_option.group(2)
        key = key if group_name in ("fit", "test") else f"{group_name}.{key}"
        return f"unknown option --{key}{_did_you_mean(key, valid)} {help_hint}"
    if unknown:
        key = unknown.group(1).removeprefix("init_args.")
        key = key if "." in key or not group_name else f"{group_name}.{key}"
        return f"unknown option --{key}{_did_you_mean(key, valid)} {help_hint}"
    unrecognized = re.search(r"unrecognized arguments: (.*)", message, flags=re.IGNORECASE)
    if unrecognized:
        first = unrecognized.group(1).split()[0]
        key = first.lstrip("-").split("=")[0].replace(".init_args.", ".")
        return f"unknown option {first}{_did_you_mean(key, valid)} {help_hint}"
    bad_value = re.search(r'Parser key "([\w.]+)":\s*(?:\n\s*)?Expected a (.*?)\. Got value: (.*)', message)
    if bad_value:
        key, expected, got = bad_value.groups()
        key = key if not group_name or group_name == key.split(".")[0] else f"{group_name}.{key}"
        expected = re.sub(r"<class '(\w+)'>", r"\1", expected)
        return f"--{key}: expected {expected}, got {got.strip()!r}"
    choice = re.search(r"invalid choice: '?(\w+)'? \(choose from (.*?)\)", message)
    if choice:
        return f"unknown subcommand {choice.group(1)!r}: choose from {choice.group(2)} (python -m mrq_lightning --help)"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines) + f" {help_hint}"
