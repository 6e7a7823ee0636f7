"""The emotion label set, in AFEW order, defined once for every module and test."""

EMOTIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
NUM_CLASSES = len(EMOTIONS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

SPLITS: tuple[str, ...] = ("train", "val", "test")


def label_index(name: str) -> int:
    """Index of an AFEW label name (case-insensitive); ValueError names the valid set."""
    for known, i in LABEL_INDEX.items():
        if known.lower() == name.lower():
            return i
    raise ValueError(f"unknown emotion label {name!r}; expected one of {', '.join(EMOTIONS)}")
