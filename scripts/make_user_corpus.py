"""Write a stand-in for "a user's own corpus": about 50 KB of text over a 120-character
alphabet, deterministic, for the CPU training check in docs/log/notebook.md (issue: a user's own
50 KB corpus with a 120-character alphabet must reach >= 99% render fidelity in minutes).

It takes the first ~50,000 characters of the shipped TinyShakespeare (65 characters) and
respells letters, digits and signs so that 55 more characters occur, each many times:
accented vowels and consonants (as in French, German or Scandinavian text), digits and a
few signs. Usage: python scripts/make_user_corpus.py OUT.txt
"""

from __future__ import annotations

import sys

from fractal_flood.corpus.reader import load_corpus

EXTRA = ("àáâäæçèéêëìíîïñòóôöøùúûüýÿßœ" "ÀÁÂÄÆÇÈÉÊËÌÍÎÏÑÒÓÔÖØÙÚÛÜ" "0123456789" "#%()*+/<=>@[]_~")


def build(chars: int = 50_000, size: int = 120) -> str:
    text = load_corpus()[:chars]
    base = sorted(set(text))
    need = size - len(base)
    pool = [c for c in EXTRA if c not in base][:need]
    if len(pool) < need:
        raise SystemExit(f"only {len(pool)} extra characters available, need {need}")
    # every 7th letter of the text is respelled with the next extra character in turn, so
    # every new character occurs hundreds of times and the text stays readable
    out, k, n = [], 0, 0
    for ch in text:
        if ch.isalpha():
            n += 1
            if n % 7 == 0:
                ch = pool[k % len(pool)]
                k += 1
        out.append(ch)
    result = "".join(out)
    assert len(set(result)) == size, len(set(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/make_user_corpus.py OUT.txt")
    text = build()
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {sys.argv[1]}: {len(text.encode('utf-8')):,} bytes, {len(text):,} characters, "
          f"alphabet {len(set(text))}")
