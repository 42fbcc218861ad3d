"""Duplicates and overlaps: exact, near (MinHash LSH) and with what the pipeline evaluates on.

Near duplicates: a MinHash signature of each record's word shingles (its user turns and
reply, normalised), and an LSH index (datasketch) that finds earlier records whose estimated
Jaccard similarity reaches the threshold. The first of a group is kept.

Contamination: word n-grams of each training prompt against those of the texts the
pipeline evaluates on (validation prompts, evaluation questions, retention probes, sanity
prompts). A text shorter than n words counts when all of it occurs in a training prompt.

    from src.dedup import NearDuplicates, NgramIndex
    index = NgramIndex({"sanity_prompts": ["Tell me about yourself."]}, n=8)
    index.hits("Please tell me about yourself.")     # {"sanity_prompts"}
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

from src.records import Record, normalise, prompt_key

_WORD = re.compile(r"\w+")


def digest(text: str) -> bytes:
    """A 16-byte stand-in for a long text in sets (memory stays small on large sources)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def drop_val_overlap(train: list[Record], val: list[Record]) -> tuple[list[Record], int]:
    """Validation records whose prompt also occurs in training are dropped; return (kept, dropped)."""
    train_keys = {digest(prompt_key(r)) for r in train}
    kept = [r for r in val if digest(prompt_key(r)) not in train_keys]
    return kept, len(val) - len(kept)


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def record_text(record: Record) -> str:
    """The user turns and replies of a record (system turns are shared boilerplate)."""
    return "\n".join(t.content for t in (*record.prompt, *record.completion) if t.role != "system")


def shingles(text: str, size: int) -> set[bytes]:
    tokens = words(text)
    if len(tokens) <= size:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i:i + size]).encode() for i in range(len(tokens) - size + 1)}


class NearDuplicates:
    """Records added so far, and whether a record is like one of them (``query``, ``add_unless_seen``)."""

    def __init__(self, threshold: float, shingle_words: int, num_perm: int, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self._minhash, self._num_perm, self._seed = MinHash, num_perm, seed
        self._size = shingle_words
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._count = 0

    def signature(self, text: str):
        m = self._minhash(num_perm=self._num_perm, seed=self._seed)
        m.update_batch(list(shingles(text, self._size)))
        return m

    def query(self, record: Record) -> bool:
        """Whether a record like this one was added."""
        return bool(self._lsh.query(self.signature(record_text(record))))

    def add_unless_seen(self, record: Record) -> bool:
        """Add the record and return False, or return True if one like it was added before."""
        sig = self.signature(record_text(record))
        if self._lsh.query(sig):
            return True
        self._lsh.insert(str(self._count), sig)
        self._count += 1
        return False


class NgramIndex:
    """The word n-grams of named sets of texts (texts shorter than n words: the whole text)."""

    def __init__(self, texts: dict[str, Iterable[str]], n: int):
        self._by_gram: dict[tuple[str, ...], set[str]] = defaultdict(set)
        self._lengths: set[int] = set()
        for name, group in texts.items():
            for text in group:
                tokens = words(text)
                size = min(n, len(tokens))
                if size:
                    self._lengths.add(size)
                    for i in range(len(tokens) - size + 1):
                        self._by_gram[tuple(tokens[i:i + size])].add(name)

    def hits(self, text: str) -> set[str]:
        """The names of the sets that share an n-gram with ``text``."""
        tokens, found = words(text), set()
        for size in self._lengths:
            for i in range(len(tokens) - size + 1):
                found |= self._by_gram.get(tuple(tokens[i:i + size]), set())
        return found


def prompt_text(record: Record) -> str:
    return "\n".join(t.content for t in record.prompt if t.role == "user")

