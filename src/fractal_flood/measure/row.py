"""One measured row of the bench, complete before anyone sees it.

A row is built whole (work, timing, quality, note, requests) and then frozen, so a partial
report written after each row never shows a row that later changes. Rates (tokens/s,
MFLOP/token) are derived here, once, from the counts and the median time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Union

NA = "n/a"  # a field that does not apply to a row (e.g. render fidelity of AR text)

Num = Union[int, float, str]  # a number, or NA


@dataclass(frozen=True)
class BenchRow:
    name: str
    mode: str  # render-only, end-to-end, autoregressive
    stream: str  # single or batched
    decoder: str
    k: Num
    model: str  # which model wrote the text: manager (Fractal Flood), AR peer, tokenizer, baseline
    roots: Num
    requests: int  # independent texts written at once
    tokens: int  # level-1 chunks (the AR peer's tokens)
    chars: int
    seconds: float  # median of the timed runs
    tokens_per_s: float
    chars_per_s: float
    plan_chars_div_4_per_s: float
    fidelity: Num  # share of roots rendered exactly (NA: no renderer)
    cer: Num
    heldout_bpc: Num  # held-out bits per char of the model that chose the text (NA: render-only)
    sample_bpc: Num  # bits per char of this row's text under the trained AR peer
    flops: int  # matrix FLOPs of every pass the row ran, from shapes (flops.py)
    mflop_per_token: float
    draws: Num
    passes: Num
    manager_steps: Num
    repeats: int
    times: tuple
    wall_s: float  # the row's wall time, warm-up included
    note: str
    device: str
    dtype: str
    torch: str
    date: str

    @classmethod
    def measured(cls, *, tokens: int, chars: int, seconds: float, flops: int, times, **rest) -> "BenchRow":
        """A row from its counts and timing; the rates are computed, not passed."""
        return cls(tokens=tokens, chars=chars, seconds=seconds, flops=int(flops), times=tuple(times),
                   tokens_per_s=tokens / seconds, chars_per_s=chars / seconds,
                   plan_chars_div_4_per_s=chars / 4 / seconds,
                   mflop_per_token=flops / tokens / 1e6 if tokens else 0.0, **rest)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["times"] = list(self.times)
        return d


ROW_FIELDS = tuple(f.name for f in fields(BenchRow))
