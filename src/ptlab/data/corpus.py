"""Document corpora as texts: the readers of `ptlab.data.readers` under their older names, and a thinned sample.

`iter_records(paths, sources)` and `iter_texts(paths, sources)` keep their signatures; any format, directory or glob
that `readers.expand_inputs` accepts works, and `text_field`, `text_mode`, `skip_bad`, `stats` pass through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ptlab.data import readers


def iter_records(paths: Iterable[str | Path], sources: Iterable[str] = (), **options) -> Iterator[dict]:
    return readers.iter_records(paths, sources=sources, **options)


def iter_texts(paths: Iterable[str | Path], sources: Iterable[str] = (), **options) -> Iterator[str]:
    return readers.iter_texts(paths, sources=sources, **options)


def sample_texts(paths: list[str | Path], sources: Iterable[str] = (), max_bytes: int = 0,
                 **options) -> Iterator[str]:
    """Texts of the corpus, thinned to about `max_bytes` by keeping every k-th document (0: everything).

    Spreading the sample over the whole corpus keeps every source represented, which a prefix would not. Options
    are those of `readers.iter_texts`; a `stats` counts the second (sampling) pass only.
    """
    sources = list(sources)
    if max_bytes <= 0:
        yield from iter_texts(paths, sources, **options)
        return
    measuring = {**options, "stats": None}
    total = sum(len(t.encode("utf-8")) for t in iter_texts(paths, sources, **measuring))
    stride = max(1, -(-total // max_bytes))
    for i, text in enumerate(iter_texts(paths, sources, **options)):
        if i % stride == 0:
            yield text
