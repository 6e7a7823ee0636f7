"""The emotion label set, in AFEW order, defined once for every module and test."""

EMOTIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
NUM_CLASSES = len(EMOTIONS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

SPLITS: tuple[str, ...] = ("train", "val", "test")

