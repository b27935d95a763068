"""What an image carries, beyond its file being sound: a perceptual hash (near-duplicates), the entropy of
its grey levels (blank frames), and the near-duplicate search between a drop and the dataset it joins.

The hash is imagehash's pHash at 256 bits (`hash_size` 16): the low frequencies of the image's DCT, so a
re-encoded, slightly resized or recoloured copy lands a few bits away while distinct images differ in
about half of them (toy world: distinct images ≥ 66 bits apart, re-encoded and resized copies ≤ 22;
`validation.near_duplicate` = 32 by default). Hashes are hex strings in the validation table and packed
bits in the content store, so a drop is compared with the whole dataset without reading its images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

HASH_SIZE = 16  # pHash side: 16×16 = 256 bits
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
TRAIN_SPLITS = ("train", "train_aug")  # every other split (val, test, ...) is held out: no near-copy anywhere
_CHUNK = 1 << 22  # pair distances computed at once (rows × reference images)


def perceptual_hash(image: Image.Image) -> str:
    """pHash (256 bits) of an image as hex; the image as the pipeline reads it (oriented, RGB or grey).

    imagehash's pHash of the grey image brought to its 64×64 DCT input first with PIL's reducing gap (a box
    reduction, then Lanczos): 3× faster on a VOC-size photo than a Lanczos over the full image, same hash
    up to a bit or two."""
    import imagehash

    side = HASH_SIZE * 4
    grey = image if image.mode == "L" else image.convert("L")
    return str(imagehash.phash(grey.resize((side, side), Image.LANCZOS, reducing_gap=2.0), hash_size=HASH_SIZE))


def grey_entropy(image: Image.Image) -> float:
    """Shannon entropy (bits) of the grey-level histogram: 0 for one flat colour, ~7-8 for a photo."""
    counts = np.asarray((image if image.mode == "L" else image.convert("L")).histogram(), dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def hash_bits(hashes) -> np.ndarray:
    """Hex hashes → packed bits [N, HASH_BYTES] uint8 (an empty or missing hash → all zeros, masked by
    the caller)."""
    out = np.zeros((len(hashes), HASH_BYTES), np.uint8)
    for i, h in enumerate(hashes):
        if isinstance(h, str) and len(h) == 2 * HASH_BYTES:
            out[i] = np.frombuffer(bytes.fromhex(h), np.uint8)
    return out


def _words(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits).view(np.uint64)  # [N, 4]


def near_pairs(a: np.ndarray, b: np.ndarray, max_distance: int, same: bool = False) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every hash a[i] within `max_distance` bits of b[j]; `same`: a is b, each pair once.
    Vectorised in chunks (XOR + popcount), memory bounded whatever the sizes."""
    if not len(a) or not len(b):
        return []
    wa, wb = _words(a), _words(b)
    step = max(1, _CHUNK // max(1, len(wb)))
    pairs = []
    for s in range(0, len(wa), step):
        d = np.bitwise_count(wa[s:s + step, None, :] ^ wb[None, :, :]).sum(-1, dtype=np.int32)
        if same:
            d[np.tril_indices(d.shape[0], k=s, m=d.shape[1])] = max_distance + 1  # j ≤ i: counted once
        i, j = np.nonzero(d <= max_distance)
        pairs += [(int(x) + s, int(y), int(d[x, y])) for x, y in zip(i, j)]
    return pairs


@dataclass(frozen=True)
class Reference:
    """The images of the dataset a drop joins, as the content store keeps them (no pixels)."""

    ids: np.ndarray
    splits: np.ndarray
    sha256: np.ndarray
    phash: np.ndarray  # [N, HASH_BYTES] uint8


def held_out(split: str) -> bool:
    return split not in TRAIN_SPLITS


def near_duplicates(table: pd.DataFrame, max_distance: int, reference: Reference | None, leak_is_fatal: bool
                    ) -> pd.DataFrame:
    """Per row of the validation table: `near_duplicates` (text naming the other image, its split and the
    distance), `no_held_out_duplicate` (False when a near-copy touches a held-out split: a leak) and
    `no_near_duplicate` (False for other near-copies). Pairs with identical bytes are the exact-duplicate
    checks' business and are left out. `leak_is_fatal`: leaks count as `no_held_out_duplicate` (a drop),
    else as plain near-duplicates (a whole dataset, reported)."""
    n = len(table)
    hashed = table["phash"].map(lambda h: isinstance(h, str) and bool(h)).to_numpy(dtype=bool)
    bits = hash_bits(table["phash"].tolist())
    found: list[list[tuple[str, str, int, bool]]] = [[] for _ in range(n)]
    ids, splits, shas = table["id"].astype(str).tolist(), table["split"].astype(str).tolist(), table["sha256"].tolist()
    rows = np.flatnonzero(hashed)
    for i, j, d in near_pairs(bits[rows], bits[rows], max_distance, same=True):
        a, b = int(rows[i]), int(rows[j])
        if shas[a] == shas[b]:
            continue
        leak = held_out(splits[a]) or held_out(splits[b])
        found[a].append((ids[b], f"this drop's {splits[b]}", d, leak))
        found[b].append((ids[a], f"this drop's {splits[a]}", d, leak))
    if reference is not None and len(reference.ids):
        for i, j, d in near_pairs(bits[rows], reference.phash, max_distance):
            a = int(rows[i])
            if shas[a] == str(reference.sha256[j]):
                continue
            split = str(reference.splits[j])
            found[a].append((str(reference.ids[j]), f"the dataset's {split}", d, held_out(split) or held_out(splits[a])))
    text, leaks, others = [], [], []
    for i in range(n):
        hits = sorted(found[i], key=lambda h: (not h[3], h[2]))
        text.append("; ".join(f"{other} in {where} ({d} bits)" for other, where, d, _ in hits[:3])
                    + (f"; and {len(hits) - 3} more" if len(hits) > 3 else ""))
        leak = any(h[3] for h in hits) and leak_is_fatal
        leaks.append(None if not hashed[i] else not leak)
        others.append(None if not hashed[i] or leak else not hits)
    return pd.DataFrame({"near_duplicates": text, "no_held_out_duplicate": pd.Series(leaks, dtype=object),
                         "no_near_duplicate": pd.Series(others, dtype=object)}, index=table.index)
