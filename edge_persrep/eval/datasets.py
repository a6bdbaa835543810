"""The DreamBooth photos (`--layout dreambooth`): `<subject>/<NN>.jpg` + `prompts_and_classes.txt`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import EdgePersrepError
from ..runtime.images import list_images


@dataclass
class Subject:
    name: str
    category: str
    photos: list[Path]


def load_dreambooth(root: Path) -> dict[str, Subject]:
    classes = root / "prompts_and_classes.txt"
    if not classes.is_file():
        raise EdgePersrepError(f"{root}: no prompts_and_classes.txt; is this the DreamBooth dataset folder?")
    category = {}
    for line in classes.read_text().splitlines():
        parts = line.strip().split(",")
        if len(parts) == 2 and (root / parts[0]).is_dir():
            category[parts[0]] = parts[1]
    return {name: Subject(name, cat, list_images([root / name])) for name, cat in sorted(category.items())}
