"""Which marketplace categories a photo's classifier labels fit: ImageNet class ranges, and for
object classes the words of their label.
"""

from __future__ import annotations

import re

from kaset.pipelines.diagnose import Scored
from kaset.pipelines.listing_schema import MAX_CATEGORIES

# ImageNet class indices (the classifier's label order) of the categories that are whole ranges.
_INDEX_CATEGORIES: list[tuple[range, str]] = [
    (range(936, 948), "Vegetables"),       # head cabbage … mushroom
    (range(948, 958), "Fruit"),            # Granny Smith … pomegranate
    (range(924, 936), "Food & drinks"),    # guacamole … mashed potato
    (range(959, 968), "Food & drinks"),    # carbonara … espresso
    (range(969, 970), "Food & drinks"),    # eggnog
    (range(958, 959), "Rice, grains & seeds"),  # hay
    (range(984, 985), "Rice, grains & seeds"),  # rapeseed
    (range(987, 988), "Vegetables"),       # corn
    (range(987, 988), "Rice, grains & seeds"),
    (range(998, 999), "Rice, grains & seeds"),  # ear (of grain)
    (range(988, 989), "Rice, grains & seeds"),  # acorn
    (range(990, 991), "Rice, grains & seeds"),  # buckeye
    (range(985, 987), "Plants & flowers"),  # daisy, yellow lady's slipper
    (range(989, 990), "Plants & flowers"),  # hip
    (range(992, 993), "Vegetables"),       # agaric
    (range(996, 998), "Vegetables"),       # hen-of-the-woods, bolete
    (range(151, 269), "Pets"),             # dogs
    (range(281, 286), "Pets"),             # domestic cats
    (range(1, 2), "Pets"),                 # goldfish
    (range(7, 9), "Livestock & poultry"),  # cock, hen
    (range(97, 98), "Livestock & poultry"),  # drake
    (range(99, 100), "Livestock & poultry"),  # goose
    (range(339, 340), "Livestock & poultry"),  # sorrel (horse)
    (range(341, 342), "Livestock & poultry"),  # hog
    (range(345, 347), "Livestock & poultry"),  # ox, water buffalo
    (range(348, 349), "Livestock & poultry"),  # ram
]
# Object classes (398-923) by words of their label.
_WORD_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Kitchen & dining": (
        "cup", "coffee mug", "plate", "teapot", "coffeepot", "frying pan", "wok", "caldron", "espresso maker",
        "pitcher", "water jug", "wine bottle", "beer glass", "goblet", "ladle", "spatula", "mixing bowl",
        "soup bowl", "dutch oven", "crock pot", "toaster", "waffle iron", "microwave", "refrigerator",
        "dishwasher", "can opener", "corkscrew", "strainer", "tray", "saltshaker", "measuring cup",
        "wooden spoon", "beer bottle", "pop bottle", "water bottle", "cocktail shaker", "plate rack", "rotisserie",
        "dishrag", "hot pot", "pizza", "eggnog"),
    "Home & garden": (
        "pot", "vase", "lamp", "table lamp", "rocking chair", "folding chair", "studio couch", "four-poster",
        "quilt", "pillow", "bookcase", "chest", "wardrobe", "window shade", "doormat", "broom", "bucket",
        "watering can", "rain barrel", "birdhouse", "wall clock", "shower curtain", "bath towel", "bathtub",
        "china cabinet", "dining table", "desk", "lampshade", "barrow", "lawn mower", "candle", "hamper"),
    "Farm tools & machinery": (
        "tractor", "harvester", "thresher", "plow", "hammer", "shovel", "hatchet", "chain saw", "power drill",
        "screwdriver", "barrow", "lawn mower", "chain", "cleaver", "plane", "hay"),
    "Vehicles": (
        "car", "truck", "pickup", "jeep", "minivan", "cab", "convertible", "limousine", "bicycle", "mountain bike",
        "motor scooter", "moped", "tricycle", "tractor", "forklift", "golf cart", "ambulance", "fire engine",
        "police van", "school bus", "trolleybus", "canoe", "speedboat", "go-kart", "racer", "snowmobile",
        "tandem", "moving van", "recreational vehicle", "wheel"),
    "Clothing & accessories": (
        "jersey", "sweatshirt", "cardigan", "jean", "miniskirt", "kimono", "abaya", "gown", "suit", "trench coat",
        "fur coat", "lab coat", "poncho", "sarong", "apron", "bow tie", "windsor tie", "sock", "running shoe",
        "sandal", "clog", "cowboy boot", "loafer", "cowboy hat", "sombrero", "bonnet", "backpack", "purse",
        "wallet", "sunglasses", "necklace", "umbrella", "bikini", "swimming trunks", "mitten", "stole", "vestment"),
    "Electronics": (
        "laptop", "notebook", "desktop computer", "monitor", "screen", "television", "cellular telephone", "ipod",
        "remote control", "computer keyboard", "mouse", "printer", "radio", "loudspeaker", "digital watch",
        "reflex camera", "polaroid camera", "projector", "joystick", "modem", "hard disc", "cd player",
        "cassette player", "tape player", "microphone", "hand-held computer", "dial telephone", "space heater"),
    "Toys, sports & outdoors": (
        "teddy", "toyshop", "jigsaw puzzle", "soccer ball", "basketball", "tennis ball", "golf ball",
        "ping-pong ball", "volleyball", "rugby ball", "croquet ball", "baseball", "football helmet",
        "mountain tent", "sleeping bag", "dumbbell", "barbell", "ski", "snorkel", "paddle", "racket", "puck",
        "balance beam", "parallel bars", "horizontal bar", "kite", "yo-yo"),
}
_WORD_PATTERNS = {category: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
                  for category, words in _WORD_CATEGORIES.items()}


def suggest_categories(labels: list[Scored]) -> list[str]:
    """The categories the classifier's labels fit, best label first; ["Other"] when none does."""
    found: list[str] = []
    for scored in labels:
        by_index = [category for indices, category in _INDEX_CATEGORIES if scored.index in indices]
        found.extend(by_index)
        if not by_index and scored.index >= 398:  # objects (and "cup"), by the words of their label
            label = scored.label.lower()
            found.extend(c for c, pattern in _WORD_PATTERNS.items() if pattern.search(label))
    unique = list(dict.fromkeys(found))[:MAX_CATEGORIES]
    return unique or ["Other"]
