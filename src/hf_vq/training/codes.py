"""Token grids of an image dataset: what the generator recipes train on (`examples/extract_codes.py` writes them)."""

from __future__ import annotations

import json

import torch
from datasets import Array2D, ClassLabel, Dataset, DatasetInfo, Features, Value
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..utils import weights_digest
from .data import ImageTransform, collate, id2label_from_dataset, with_image_transform

CODES_TOKENIZER_KEY = "hf_vq_tokenizer_weights_sha256"


def codes_tokenizer_digest(codes: Dataset) -> str | None:
    """The `weights_digest` of the tokenizer that made a codes table (None for tables written before it was kept)."""
    try:
        return json.loads(codes.info.description or "{}").get(CODES_TOKENIZER_KEY)
    except (json.JSONDecodeError, AttributeError):
        return None


@torch.no_grad()
def extract_codes(
    tokenizer: torch.nn.Module, dataset: Dataset, resolution: int, flip: bool = True, batch_size: int = 256,
    progress: bool = True,
) -> Dataset:
    """Tokenize a labelled image dataset (and, with `flip`, each image's left-right mirror) into a `datasets` table of
    `codes` (k, h * w) int32, `label` and `flipped` columns."""
    if "label" not in dataset.column_names:
        raise ValueError("class-conditional generators need labels: the dataset has no label column")
    id2label = id2label_from_dataset(dataset)
    tokenizer.eval()
    made_by = weights_digest(tokenizer)  # before tokenizing: what the tokenizer was when it was given
    transform = ImageTransform(resolution, channels=tokenizer.in_channels)
    loader = DataLoader(with_image_transform(dataset, transform), batch_size=batch_size, collate_fn=collate)
    codes, labels, flipped = [], [], []
    for batch in tqdm(loader, desc="tokenizing", disable=not progress):
        views = [(batch["pixel_values"], False)]
        if flip:
            views.append((batch["pixel_values"].flip(-1), True))
        for pixels, is_flip in views:
            indices = tokenizer.tokenize(pixels.to(tokenizer.device))
            codes.append(indices.flatten(2).to(torch.int32).cpu())
            labels.append(batch["class_labels"])
            flipped += [is_flip] * len(pixels)
    codes = torch.cat(codes)
    k, n = codes.shape[1:]
    features = Features({
        "codes": Array2D(shape=(k, n), dtype="int32"),
        "label": ClassLabel(names=[id2label[i] for i in sorted(id2label)]),
        "flipped": Value("bool"),
    })
    # Which tokenizer made them, saved with the table: a generator trained on them must be decoded by that one.
    info = DatasetInfo(description=json.dumps({CODES_TOKENIZER_KEY: made_by}), features=features)
    return Dataset.from_dict(
        {"codes": codes.numpy(), "label": torch.cat(labels).tolist(), "flipped": flipped}, features=features,
        info=info,
    )
