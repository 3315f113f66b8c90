"""``hf:PATH``: a Hugging Face dataset saved with ``save_to_disk`` (read locally, never
downloaded).  A ``DatasetDict`` gives its ``train`` and ``test`` (or ``validation``)
splits; a plain ``Dataset`` is the train split.  Images are read lazily through
:mod:`selfsup.data.python`."""
from __future__ import annotations

from pathlib import Path

from selfsup.data import DATASETS, Dataset, check_path, random_subset
from selfsup.errors import SelfSupError


@DATASETS.register("hf", modality=None, help="a Hugging Face dataset saved with save_to_disk (hf:PATH), image or text + label columns")
def build(path: str | None = None, *, image_size: int | None = None, seed: int = 0,
          num_train: int | None = None, num_test: int | None = None, text=None, **_ignored) -> Dataset:
    check_path("hf", path, required=True)
    if not Path(path).expanduser().is_dir():
        raise SelfSupError(f"hf:{path}: no such folder; save the dataset with Dataset.save_to_disk(PATH)")
    try:
        import datasets
    except ImportError:
        raise SelfSupError("hf:PATH needs the 'datasets' package: pip install datasets") from None
    from selfsup.data.python import as_dataset

    try:
        loaded = datasets.load_from_disk(str(Path(path).expanduser()))
    except (FileNotFoundError, ValueError) as err:
        raise SelfSupError(f"hf:{path} is not a dataset saved with save_to_disk ({err})") from None
    ds = as_dataset(loaded, image_size=image_size, text=text)
    ds.name = f"hf:{path}"
    ds.train = random_subset(ds.train, num_train, seed)
    if ds.test is not None:
        ds.test = random_subset(ds.test, num_test, seed)
    return ds
