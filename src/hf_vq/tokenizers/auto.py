"""The tokenizer family: its one list of classes, and the loader that opens any saved tokenizer as its class."""

from __future__ import annotations

import os
from typing import Any

from diffusers.configuration_utils import ConfigMixin

from .base import ImageTokenizerMixin
from .modeling_fqgan import FQGANTokenizer
from .modeling_vitvqgan import ViTVQGANTokenizer
from .modeling_vqkd import VQKDTokenizer

# Every tokenizer class, in one place: the family loader, the diffusers pipeline loader and the contract tests
# read this list. A new tokenizer is its modeling file plus one line here.
TOKENIZER_CLASSES: list[type[ImageTokenizerMixin]] = [
    FQGANTokenizer,
    VQKDTokenizer,
    ViTVQGANTokenizer,
]

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")


def tokenizer_class(name: str) -> type[ImageTokenizerMixin]:
    """The registered tokenizer class called `name`, with an error listing the family when there is none."""
    for cls in TOKENIZER_CLASSES:
        if cls.__name__ == name:
            return cls
    known = ", ".join(cls.__name__ for cls in TOKENIZER_CLASSES)
    raise ValueError(f"{name!r} is not an hf_vq tokenizer class; the family is: {known}")


# Where a pipeline (FQGANPipeline's model_index.json layout) keeps its tokenizer.
PIPELINE_SUBFOLDER = "vqvae"


class AutoImageTokenizer(ConfigMixin):
    """Opens any saved hf_vq tokenizer (folder or Hub id) as the class its config names; given a pipeline (folder or
    Hub id) without a `subfolder`, its tokenizer.

        tokenizer = AutoImageTokenizer.from_pretrained("runs/fmnist-tokenizer/tokenizer")
        tokenizer = AutoImageTokenizer.from_pretrained("org/fqgan-far-large")  # = subfolder="vqvae"
    """

    config_name = "config.json"

    def __init__(self, *args, **kwargs):
        raise OSError("AutoImageTokenizer is a loader: use AutoImageTokenizer.from_pretrained(...) or from_config")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> ImageTokenizerMixin:
        """Read the config, pick the class it names, and load the weights with that class's `from_pretrained`."""
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        try:
            config = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        except OSError as err:
            if "subfolder" in kwargs:
                raise
            try:  # a pipeline: no config at its root, its tokenizer in vqvae/
                config = cls.load_config(pretrained_model_name_or_path, **hub_kwargs, subfolder=PIPELINE_SUBFOLDER)
            except OSError:
                raise err from None
            kwargs["subfolder"] = PIPELINE_SUBFOLDER
        return cls._class_of(config, pretrained_model_name_or_path).from_pretrained(
            pretrained_model_name_or_path, **kwargs
        )

    @classmethod
    def from_config(cls, config: dict[str, Any], default_class: str | None = None, **kwargs) -> ImageTokenizerMixin:
        """A randomly initialised tokenizer of the class `config["_class_name"]` names (else `default_class`)."""
        config = dict(config)
        if default_class is not None:
            config.setdefault("_class_name", default_class)
        return cls._class_of(config, "the config").from_config(config, **kwargs)

    @staticmethod
    def _class_of(config: dict[str, Any], origin: Any) -> type[ImageTokenizerMixin]:
        name = config.get("_class_name")
        if not isinstance(name, str) and "model_type" in config:
            raise ValueError(f"{origin} holds a {config['model_type']} generator (a transformers model), not a "
                             "tokenizer: give the tokenizer's folder, or the pipeline's")
        if not isinstance(name, str):
            raise ValueError(
                f"{origin} has no `_class_name`, so it is not a saved hf_vq tokenizer config; "
                "save tokenizers with save_pretrained"
            )
        return tokenizer_class(name)
