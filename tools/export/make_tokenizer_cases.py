"""Write tests/fixtures/tokenizer_cases.json: varied strings and the ids OpenCLIP's
tokenizer gives them. The Rust tokenizer test (tests/embed_tokenizer.rs) must reproduce
every one.

    .venv-torch/bin/python -m tools.export.make_tokenizer_cases

Strings that ftfy would treat as mojibake (ftfy.fix_encoding changes them) are listed
separately under "mojibake" and are not expected to match: that heuristic is not ported.
"""

import hashlib
import json
import random
import sys
import unicodedata
from pathlib import Path

import ftfy
import open_clip
from open_clip.tokenizer import SimpleTokenizer, default_bpe

HAND = [
    "", " ", "   \t\n  ", "a", "A", "hello world", "Hello World!", "HELLO, WORLD?!",
    "a satellite photo of a farmland", "A satellite image of an airport with many planes.",
    "There are 15 aircrafts parked in the middle of the picture.",
    "don't", "it's", "We'LL", "they've I'm she'd you're", "rock'n'roll", "'s 't 're",
    "O'Brien's dog's bone", "the '90s", "''quoted''",
    "3.14159", "1,000,000", "2024-05-18", "10:30am", "+49 (0)30 1234567", "1e-4", "0x1F",
    "route 66", "ViT-B/16", "ResNet50", "A100 GPU", "42nd street", "№5", "Ⅻ", "½ ¾ ²³",
    "café", "naïve", "Zürich", "São Paulo", "Foz do Iguaçu", "Ærøskøbing", "Łódź", "Straße",
    "crème brûlée", "piñata", "Dvořák", "İstanbul", "ıi İI", "cafe\u0301", "n\u0303",
    "ΟΔΟΣ", "Σίσυφος", "Ἀθῆναι", "Москва", "Київ", "Ελλάδα", "עברית", "العربية", "हिन्दी",
    "ภาษาไทย", "ქართული", "Հայերեն", "東京", "北京市", "서울특별시", "日本語のテキスト",
    "中文，标点符号。", "ｶﾀｶﾅ", "ＡＢＣ１２３", "Ｈｅｌｌｏ　Ｗｏｒｌｄ", "𝒥ohn ℋancock",
    "🚀", "👍🏽", "🇧🇷🇭🇹", "👨‍👩‍👧‍👦 family", "I ❤️ NY", "🏴󠁧󠁢󠁷󠁬󠁳󠁿 wales", "☀️🌧️⛈️", "😀😃😄😁",
    "ﬁnance ﬂow ﬀ ﬃ", "Ĳssel", "ǅemal", "“smart quotes”", "‘single’", "it’s", "„German“",
    "«French» ‹guillemets›", "em—dash en–dash", "ellipsis…", "bullet • point", "™ © ®",
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "Tom &amp; Jerry", "&quot;quoted&quot;", "&#39;apos&#39;",
    "&#x27;hex&#x27;", "a&nbsp;b", "&copy 2024", "&amp;amp; double", "&amp;amp;amp; triple",
    "&NTILDE;", "&ntilde; &Ntilde; &nTILDE;", "&notit;", "&ampx", "&#128;", "&#0;", "&#xD800;",
    "&#99999999999;", "&bogus;", "AT&T", "R&D", "<b>bold</b> &amp; brave", "x < y &amp; z",
    "line1\nline2 &amp;\n<tag> &amp;", "<start_of_text>", "<end_of_text> after",
    "<START_OF_TEXT>", "<|startoftext|>", "tabs\tand\nnewlines\r\nand\rreturns",
    "nbsp\u00a0here", "ideographic\u3000space", "zero\u200bwidth", "soft\u00adhyphen",
    "ctrl\x07bell\x1bx", "\x1b[36mblue\x1b[0m", "c1 \x93quoted\x94", "nel\x85next",
    "sep\u2028line\u2029para", "bom\ufeffhere", "rtl\u200fmark", "info\x1fsep",
    "multiple     spaces", "trailing   ", "   leading", "snake_case_name", "kebab-case-name",
    "camelCaseName", "PascalCaseName", "email@example.com", "https://example.com/a?b=c&d=e",
    "#hashtag @mention", "$100.00 €50 £20 ¥1000", "100%", "C++ & C#", "f(x) = x^2 + 2x + 1",
    "[brackets] {braces} (parens)", "!!!???...", "---", "~~~", "a/b\\c|d", "\"double\" 'single'",
    "...and then", "mr. smith, jr.", "U.S.A.", "e.g. i.e. etc.",
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ab" * 40,
    "word " * 100, "🚀" * 50, "東京" * 60,
    "A very long caption that goes on and on, describing a satellite image of a coastal "
    "city with a harbour, many ships, warehouses, a long breakwater, several cranes, "
    "residential neighbourhoods with red roofs, a river delta, agricultural fields in the "
    "hinterland, a small airport with two runways, and a highway interchange near the "
    "industrial zone where containers are stacked in colourful rows.",
]

CLASSES = [
    "airport", "bare land", "baseball field", "beach", "bridge", "center", "church",
    "commercial", "dense residential", "desert", "farmland", "forest", "industrial",
    "meadow", "medium residential", "mountain", "park", "parking", "playground", "pond",
    "port", "railway station", "resort", "river", "school", "sparse residential", "square",
    "stadium", "storage tanks", "viaduct",
]
TEMPLATES = ["a satellite photo of {}.", "An aerial image of a {}", "There is a {} in the middle of the picture.",
             "many {}s", "{}"]

POOL_WORDS = [
    "river", "Forest", "CITY", "lake", "東京", "서울", "Москва", "café", "Zürich", "ΟΔΟΣ",
    "road", "12", "3.5", "1,000", "🚀", "👍🏽", "&amp;", "&lt;", "it's", "don't", "—", "…",
    "“q”", "ﬁeld", "ＡＢＣ", "الماء", "नदी", "ข้าว", "¿qué?", "¡sí!", "naïve", "coöperate",
    "x86_64", "v2.0", "#tag", "@user", "(a)", "[b]", "e\u0301", "ß", "İ", "Σ",
]


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    out = root / "tests" / "fixtures" / "tokenizer_cases.json"
    rng = random.Random(20240518)
    texts = list(HAND)
    for c in CLASSES:
        texts.append(rng.choice(TEMPLATES).format(c))
    # Random mixes of words from many scripts.
    for _ in range(60):
        n = rng.randint(1, 12)
        seps = [" ", " ", " ", "", ", ", "\n", "\t", "-", "/"]
        texts.append("".join(rng.choice(POOL_WORDS) + rng.choice(seps) for _ in range(n)))
    # Random assigned code points from several blocks (Unicode 14, Python 3.11's table).
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F),
              (0x2000, 0x206F), (0xFF00, 0xFFEF)]
    for _ in range(40):
        s = []
        for _ in range(rng.randint(1, 20)):
            lo, hi = rng.choice(blocks)
            ch = chr(rng.randint(lo, hi))
            if unicodedata.category(ch) in ("Cn", "Cs", "Co"):
                continue
            s.append(ch)
        texts.append("".join(s))

    tok = SimpleTokenizer()
    cases, mojibake = [], []
    seen = set()
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        ids = tok([t])[0].tolist()
        while ids and ids[-1] == 0:
            ids.pop()
        entry = {"text": t, "ids": ids}
        if ftfy.fix_encoding(t) != t:
            mojibake.append(entry)
        else:
            cases.append(entry)
    vocab = Path(default_bpe()).read_bytes()
    doc = {
        "generator": "tools/export/make_tokenizer_cases.py",
        "open_clip_version": open_clip.__version__,
        "ftfy_version": ftfy.__version__,
        "vocab_sha256": hashlib.sha256(vocab).hexdigest(),
        "context_length": 77,
        "note": "ids are open_clip.tokenize(text)[0] with trailing zero padding removed",
        "cases": cases,
        "mojibake": mojibake,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=True, indent=0) + "\n", encoding="utf-8")
    long = sum(1 for c in cases if len(c["ids"]) == 77)
    print(f"wrote {out}: {len(cases)} cases ({long} truncated at 77), "
          f"{len(mojibake)} mojibake cases set aside", file=sys.stderr)


if __name__ == "__main__":
    main()
