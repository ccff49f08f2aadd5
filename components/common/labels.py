"""Action Unit label constants and the image key, shared by every step that reads the sheet or the examples."""
import hashlib

# EmotioNet's sheet: the URL, then one column per AU, AU1 .. AU60.
ALL_AU_IDS = tuple(range(1, 61))
AU_COLUMNS = tuple(f"AU{i}" for i in ALL_AU_IDS)
# The 11 AUs that are annotated often enough to learn (the study's finding).
DEFAULT_AU_IDS = (1, 2, 4, 5, 6, 9, 12, 17, 20, 25, 26)
# Label values: inactive, active, not annotated / occluded.
NEGATIVE, POSITIVE, UNKNOWN = 0, 1, 999
VALID_LABELS = (NEGATIVE, POSITIVE, UNKNOWN)
VA_COLUMNS = ("valence", "arousal")

AU_NAMES = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 15: "lip corner depressor", 17: "chin raiser", 20: "lip stretcher",
    23: "lip tightener", 24: "lip pressor", 25: "lips part", 26: "jaw drop", 27: "mouth stretch",
    43: "eyes closed",
}


def image_key(url: str) -> str:
    """The first 20 hex digits of sha256(url): the name of every file of that image (contract 1)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:20]


def parse_au_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; raises ValueError naming the bad item and the valid range."""
    out: list[int] = []
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        if not item.lstrip("AUau").isdigit():
            raise ValueError(f"AU list {text!r}: {item!r} is not an AU number; expected e.g. 1,2,4,12")
        au = int(item.lstrip("AUau"))
        if au not in ALL_AU_IDS:
            raise ValueError(f"AU list {text!r}: AU{au} is outside AU1..AU60")
        if au in out:
            raise ValueError(f"AU list {text!r}: AU{au} appears twice")
        out.append(au)
    if not out:
        raise ValueError(f"AU list {text!r} is empty; expected e.g. 1,2,4,12")
    return out
