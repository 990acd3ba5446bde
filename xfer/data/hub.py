"""`hf:<dataset>[:config]` data: a Hugging Face data set's train/validation/test splits as a Task's examples.

Columns are found as in a table (data/readers.py: `--text-column`, `--image-column`, `--label-column`, else by
name), helped by the data set's declared features: its one `ClassLabel` column is the label (its names are the
labels) and its one `Image` column is the image. Images become uint8 arrays, as the built-in MNIST's are.
"""

from __future__ import annotations

import numpy as np

from xfer.data.readers import choose_columns
from xfer.errors import XferError
from xfer.network import is_network_error, require_hub

VAL_SPLITS = ("validation", "valid", "val", "dev")
GREY_MODES = ("L", "1", "I", "I;16", "F")


def parse_hf_data(data: str) -> tuple[str, str | None]:
    """(data set id, config) of `hf:<dataset>[:config]`, e.g. hf:imdb, hf:stanfordnlp/imdb, hf:glue:sst2."""
    name, _, config = data[len("hf:"):].partition(":")
    if not name.strip():
        raise XferError(f"{data!r} names no data set; write hf:<dataset>[:config], e.g. hf:imdb or hf:glue:sst2.")
    return name.strip(), (config.strip() or None)


def load_hf_data(data: str, text_column=None, image_column=None, label_column=None):
    """(modality, items, labels, own val or None, own test or None, notes) of `hf:<dataset>[:config]`, downloaded
    through `datasets`. Offline it fails at once (HF_HUB_OFFLINE, or no connection to the Hub)."""
    name, config = parse_hf_data(data)
    retry = ("Connect and retry; or, where the data set is at hand, save it as Parquet (`Dataset.to_parquet`) and "
             "pass that file with --data.")
    require_hub(f"Data {data!r}", retry)
    try:
        import datasets
    except ImportError as e:
        raise XferError(f"Data {data!r} needs the `datasets` library: `pip install datasets`.") from e
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:
        if is_network_error(e):
            raise XferError(f"Could not download data {data!r} ({type(e).__name__}: {str(e)[:200]}). This machine "
                            f"looks offline. {retry}") from e
        raise XferError(f"Could not load data {data!r}: {type(e).__name__}: {str(e)[:300]}. Check the data set "
                        "name (and its config after a second colon, e.g. hf:glue:sst2).") from e
    return dataset_splits(loaded, data, text_column=text_column, image_column=image_column, label_column=label_column)


def dataset_splits(loaded, data: str, **columns):
    """(modality, items, labels, own val or None, own test or None, notes) of a `datasets.DatasetDict`: its train
    split, and its validation and test splits when it has them (a test split without labels is left out, so a
    stratified one is held out of train instead)."""
    splits = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    if "train" not in splits:
        raise XferError(f"Data {data!r} has no train split (its splits: {', '.join(splits) or 'none'}).")
    modality, items, raw, notes = dataset_examples(splits["train"], f"{data} (train split)", **columns)
    own = []
    for names in (VAL_SPLITS, ("test",)):
        split = next((n for n in names if n in splits), None)
        if split is None:
            own.append(None)
            continue
        what = f"{data} ({split} split)"
        if _unlabelled(splits[split], columns.get("label_column")):
            notes.append(f"{what} has no labels; left out, a seeded stratified split is held out of train instead")
            own.append(None)
            continue
        mod, split_items, split_raw, split_notes = dataset_examples(splits[split], what, **columns)
        if mod != modality:
            raise XferError(f"{what} holds {mod} data but the train split holds {modality} data.")
        notes += split_notes
        own.append((split_items, split_raw))
    return modality, items, raw, own[0], own[1], notes


def dataset_examples(ds, what: str, text_column=None, image_column=None, label_column=None):
    """(modality, items, labels, notes) of one `datasets.Dataset`: texts or uint8 image arrays, and label names."""
    from datasets import ClassLabel, Image

    features = ds.features
    if label_column is None:
        declared = [c for c, f in features.items() if isinstance(f, ClassLabel)]
        label_column = declared[0] if len(declared) == 1 else None
    if image_column is None and text_column is None:
        declared = [c for c, f in features.items() if isinstance(f, Image)]
        image_column = declared[0] if len(declared) == 1 else None
    label_col, image_col, text_col = choose_columns(list(features), what, text_column, image_column, label_column)
    if len(ds) == 0:
        raise XferError(f"{what} has no rows.")
    feature = features[label_col]
    labels = [_label(v, feature) for v in ds[label_col]]
    missing = [i + 1 for i, lab in enumerate(labels) if lab is None]
    if missing:
        raise XferError(f"{what}: {len(missing)} row(s) have no label in column {label_col!r} (rows "
                        f"{', '.join(map(str, missing[:10]))}). Filter them out, or name another --label-column.")
    if image_col is not None:
        if not isinstance(features[image_col], Image):
            raise XferError(f"{what}: column {image_col!r} holds {features[image_col]}, not images. Name the "
                            "image column with --image-column, or a text column with --text-column.")
        return "image", [_pixels(im) for im in ds[image_col]], labels, []
    texts = [v.strip() if isinstance(v, str) else "" for v in ds[text_col]]
    empty = [i + 1 for i, t in enumerate(texts) if not t]
    if empty:
        raise XferError(f"{what}: {len(empty)} row(s) have empty or non-text values in column {text_col!r} (rows "
                        f"{', '.join(map(str, empty[:10]))}). Filter them out, or name another --text-column.")
    return "text", texts, labels, []


def _label(value, feature) -> str | None:
    """A label's name: a ClassLabel's name for its index (-1 means unlabelled), else the value as text."""
    from datasets import ClassLabel

    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(feature, ClassLabel):
        return feature.int2str(int(value)) if int(value) >= 0 else None
    text = str(value).strip()
    return text or None


def _unlabelled(ds, label_column: str | None) -> bool:
    """Whether a split's labels are all missing (GLUE-style test splits hold -1 everywhere)."""
    from datasets import ClassLabel

    columns = [label_column] if label_column else [c for c, f in ds.features.items() if isinstance(f, ClassLabel)]
    if len(columns) != 1 or columns[0] not in ds.features or len(ds) == 0:
        return False
    feature = ds.features[columns[0]]
    return all(_label(v, feature) is None for v in ds[columns[0]])


def _pixels(image) -> np.ndarray:
    """A decoded image as an HxW (grey) or HxWx3 uint8 array."""
    return np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
