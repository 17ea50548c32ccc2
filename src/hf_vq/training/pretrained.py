"""Train a new model from a config, or fine-tune a saved one: the flags every training script shares for it.

    --tokenizer_config CONFIG.json                                  # a new tokenizer (--model_config: a generator)
    --tokenizer_config fqgan-dual-ds16                              # ... or one of the script's presets
    --pretrained_model_name_or_path org/fqgan-far-large --subfolder vqvae   # fine-tune a saved or converted model
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

PRETRAINED_FLAG = "pretrained_model_name_or_path"


def add_model_source_arguments(
    parser: argparse.ArgumentParser, config_flag: str, config_help: str, presets: Iterable[str] = ()
) -> None:
    """`--<config_flag>` for a new model (a JSON file or a preset name), or `--pretrained_model_name_or_path`
    (+ `--subfolder`) to fine-tune one."""
    names = f", or a preset: {', '.join(sorted(presets))}" if presets else ""
    parser.add_argument(f"--{config_flag}", default=None, help=f"{config_help}{names} (or --{PRETRAINED_FLAG})")
    parser.add_argument(f"--{PRETRAINED_FLAG}", default=None,
                        help="fine-tune a saved model instead: a folder or Hub id (a converted official checkpoint, a "
                             "pipeline with --subfolder)")
    parser.add_argument("--subfolder", default=None,
                        help=f"the model's subfolder in --{PRETRAINED_FLAG} (a pipeline's vqvae or transformer)")


def pretrained_source(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """(name or path, subfolder) when the run fine-tunes a saved model, else None."""
    name = getattr(args, PRETRAINED_FLAG, None)
    return None if name is None else (name, args.subfolder)


def read_model_config(
    args: argparse.Namespace,
    config_flag: str,
    load_config: Callable[[str, str | None], dict[str, Any]],
    presets: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The config of the model to train: the JSON file or the name in `presets` that `--<config_flag>` gives, or
    the saved model's own config (its bookkeeping fields dropped) read by `load_config(name, subfolder)`."""
    path = getattr(args, config_flag)
    if (path is None) == (getattr(args, PRETRAINED_FLAG) is None):
        raise ValueError(f"give --{config_flag} (a new model) or --{PRETRAINED_FLAG} (fine-tuning a saved one): "
                         "exactly one of them")
    if args.subfolder is not None and path is not None:
        raise ValueError(f"--subfolder goes with --{PRETRAINED_FLAG}, not with --{config_flag}")
    if path is not None:
        return _config_file_or_preset(path, config_flag, presets or {})
    name = getattr(args, PRETRAINED_FLAG)
    if args.subfolder is None and (Path(name) / "model_index.json").is_file():
        raise ValueError(f"--{PRETRAINED_FLAG} {name} is a pipeline folder: name the model in it with --subfolder "
                         "(vqvae for the tokenizer, transformer for the generator)")
    config = load_config(name, args.subfolder)
    return {k: v for k, v in config.items() if k == "_class_name" or not k.startswith("_")}


def names_preset(value: str | None, presets: Mapping[str, dict[str, Any]]) -> bool:
    """Whether a config flag's value names one of `presets` (a file of that name comes first)."""
    return value in presets and not Path(value).is_file()


def _config_file_or_preset(path: str, config_flag: str, presets: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    if names_preset(path, presets):
        # Through JSON, as a config file would come: the run's identity is compared with its JSON when resumed.
        return json.loads(json.dumps(presets[path]))
    if Path(path).is_file():
        return read_json_file(path, f"--{config_flag}")
    names = f"nor one of the presets: {', '.join(sorted(presets))}" if presets else "(this script has no presets)"
    raise FileNotFoundError(f"--{config_flag} {path}: no such config file, {names}")


def read_json_file(path: str | Path, flag: str) -> dict[str, Any]:
    """The JSON in the file that `flag` names, or a clear error naming the flag."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} {path} is not valid JSON: {err}") from None


def describe_source(args: argparse.Namespace, config_flag: str) -> str:
    """Where the config came from, for error messages."""
    source = pretrained_source(args)
    if source is None:
        return str(getattr(args, config_flag))
    return source[0] + (f" (subfolder {source[1]})" if source[1] else "")
