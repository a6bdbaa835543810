"""Prompts for sampling: varied scenes around the personalized subject ("sks dog").

The built-in bank crosses scene contexts (those of the category's group plus a generic set) with
framings (close-up, from above, at night, ...): several hundred distinct prompts per category, and
the first hundred already visit every context. A user prompt file (one prompt per line, with
`{subject}` where the object goes; `#` starts a comment) replaces the bank.
"""

from __future__ import annotations

from pathlib import Path

from ...runtime.errors import EdgePersrepError

GROUPS = {
    "animal": ("dog", "cat", "puppy", "kitten", "pet", "rabbit", "bunny", "hamster", "bird", "parrot", "horse",
               "guinea pig"),
    "wearable": ("sneaker", "shoe", "boot", "sandal", "shirt", "t-shirt", "jacket", "hat", "cap", "glasses",
                 "sunglasses", "backpack", "bag", "handbag", "watch", "scarf"),
    "tabletop": ("mug", "cup", "bottle", "can", "vase", "teapot", "bowl", "clock", "candle", "plate", "glass",
                 "jar", "lamp", "kettle", "pen"),
    "toy": ("toy", "stuffed animal", "teddy bear", "plush", "figurine", "robot", "doll", "action figure",
            "rubber duck", "ball", "car toy"),
}

CONTEXTS = {
    "animal": [
        "running on a sandy beach", "sleeping on a grey couch", "sitting on a green lawn", "lying on a wooden floor",
        "in a snowy park", "on a forest trail", "next to a garden fence", "on a leather armchair",
        "playing in autumn leaves", "on a cosy bed with white sheets", "in the back seat of a car",
        "by a fireplace", "sitting on a porch", "on a city sidewalk", "in a field of tall grass",
        "next to a food bowl", "on a kitchen floor", "under a dining table", "looking out of a window",
        "on a hiking path in the mountains", "in a dog park with other animals", "at a lake shore",
        "on a striped rug", "in a wicker basket", "on a blanket in the sun", "in the rain on a street",
        "beside a bicycle", "on a wooden deck", "sitting in front of a brick wall", "in a flower garden",
        "on a staircase", "next to a sofa cushion", "in a veterinary clinic", "on a beach at sunset",
        "in a puddle", "in a pet carrier", "on a snowy mountain", "on a boat deck",
    ],
    "wearable": [
        "on a shoe rack", "on a wooden floor by the door", "on a store shelf", "worn on a city street",
        "on a running track", "on a bed", "in a gym locker room", "on a park bench", "in a suitcase",
        "on a hallway carpet", "hanging on a coat hook", "on a clothing rail", "on a rocky trail",
        "on a wet pavement", "next to a pair of jeans", "on a bathroom tiled floor", "in a shopping bag",
        "on a white studio backdrop", "on a car seat", "on a wooden chair", "on a sandy beach",
        "on a skateboard ramp", "next to a backpack", "on a grass field", "in a closet", "on a windowsill",
        "on a staircase step", "at a street market stall", "on a marble floor", "next to a laundry basket",
        "on a train seat", "on a desk next to a laptop", "in the snow", "on a boardwalk", "on a gravel path",
        "by the front door", "on a hotel bed", "in a cardboard box",
    ],
    "tabletop": [
        "on a kitchen counter", "on a windowsill", "on an office desk", "next to a laptop", "on a coffee table",
        "on a bookshelf", "in a sink", "on a dining table with a tablecloth", "on a picnic blanket",
        "on a marble countertop", "next to a potted plant", "on a nightstand", "on a cafe table",
        "in a dishwasher rack", "on a wooden tray", "next to a stack of books", "on a glass table",
        "on a camping table outdoors", "on a bathroom shelf", "on a store shelf", "in a cardboard box",
        "on a desk next to a keyboard", "on a breakfast table", "next to a fruit bowl", "on a stone wall",
        "on a car dashboard", "on a balcony railing", "on a workbench with tools", "on a shelf in a pantry",
        "on a hotel room desk", "next to a candle", "on a wooden cutting board", "on a checkered tablecloth",
        "on a school desk", "on a kitchen island", "next to a coffee machine", "on a window ledge in the rain",
        "on a garden table",
    ],
    "toy": [
        "on a child's bed", "on a playroom floor", "on a toy shelf", "in a toy box", "on a sofa",
        "on a wooden floor", "in a sandbox", "on a garden lawn", "on a bookshelf", "on a windowsill",
        "in a car seat", "on a picnic blanket", "next to building blocks", "on a desk", "in a backpack",
        "on a beach towel", "under a christmas tree", "on a pillow", "in a shopping cart", "on a kitchen table",
        "next to a night lamp", "on a park bench", "in a bathtub", "on a colourful rug", "on a staircase",
        "in a cardboard box", "on a swing", "next to other toys", "on a shelf in a store", "on a snowy ground",
        "in a stroller", "on a bedside table", "on a wooden chair", "in the grass", "on a train seat",
        "next to a birthday cake", "on a fluffy blanket", "on a dresser",
    ],
}
GENERIC = [
    "on a wooden table", "in a sunlit living room", "on a white background", "on a grey concrete floor",
    "in a modern office", "on a rooftop at dusk", "in a busy cafe", "in a library", "on a park bench",
    "in a garden with flowers", "in a kitchen", "on a city street", "in a forest clearing", "on a beach",
    "in the snow", "on a mountain top", "in a supermarket aisle", "on a train platform", "in a classroom",
    "in a hotel lobby", "on a balcony", "in a garage", "in a bedroom", "in a bathroom", "at a campsite",
    "on a boat", "in a museum", "in a car", "on a rug", "next to a window with rain", "under a tree",
    "on a stone path", "in a greenhouse", "at a street market", "in an attic", "on a red carpet",
    "in a workshop", "in a school hallway", "on grass in the morning dew", "on a sofa in dim light",
]
FRAMINGS = [
    "a photo of {subject} {context}", "a close-up photo of {subject} {context}",
    "a photo of {subject} {context}, seen from above", "a phone photo of {subject} {context}",
    "a photo of {subject} {context} at night", "a wide-angle photo of {subject} {context}",
]
MIN_BANK = 100  # every category gets at least this many distinct prompts


def group_of(category: str) -> str | None:
    c = category.lower().strip()
    for group, members in GROUPS.items():
        if c in members or c.rstrip("s") in members:
            return group
    return None


def contexts_for(category: str) -> list[str]:
    group = group_of(category)
    return (CONTEXTS[group] if group else []) + GENERIC


def bank(subject: str, category: str) -> list[str]:
    """Distinct prompts for `subject` ("sks dog"): context i with framing (i + round) in each round."""
    contexts = contexts_for(category)
    prompts = []
    for shift in range(len(FRAMINGS)):
        for i, context in enumerate(contexts):
            prompts.append(FRAMINGS[(i + shift) % len(FRAMINGS)].format(subject=subject, context=context))
    return prompts


def background_prompts(category: str) -> list[str]:
    """Scenes without the object, for Cut-and-Paste backgrounds (the paper drops the subject)."""
    return [f"a photo {context}, empty scene, nothing in focus" for context in contexts_for(category)]


def read_prompt_file(path: Path, subject: str) -> list[str]:
    """A user's prompts, one per line with `{subject}`; refuses an empty file or a line without it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgePersrepError(f"{path}: cannot read the prompt file ({exc}); give a UTF-8 text file") from exc
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "{subject}" not in line:
            raise EdgePersrepError(f"{path}:{number}: prompt has no {{subject}} placeholder (where the object goes), "
                                   f"e.g. 'a photo of {{subject}} on a beach'")
        prompts.append(line.replace("{subject}", subject))
    if not prompts:
        raise EdgePersrepError(f"{path}: no prompts in the file (one per line, with {{subject}})")
    return prompts
