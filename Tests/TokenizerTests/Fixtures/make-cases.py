#!/usr/bin/env python3
"""Writes tokenizer-cases.json: expected outputs of the Hugging Face `tokenizers` library (and of
the Jinja chat template, rendered the way transformers renders it) for the Swift Tokenizer tests.

    pip install tokenizers jinja2
    python3 Tests/TokenizerTests/Fixtures/make-cases.py

The tests read only the committed JSON; Python is needed only to regenerate it. Everything is
deterministic (fixed seeds), so rerunning with the same library versions gives the same file.
"""

import gzip
import json
import os
import random

import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

HERE = os.path.dirname(os.path.abspath(__file__))

SPECIAL_STRINGS = [
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]",
    "<start_of_image>", "<end_of_image>", "<unused0>", "<unused98>", "<unused99>", "<unused6241>",
    "<table>", "</td>", "<h1>", "<strong>", "<code>", "</code>",
]


def gemma_texts():
    texts = [
        "Hello world", "hello", "Hello", " Hello", "Hello ", "  Hello  ", "HELLO WORLD", "hElLo WoRlD",
        "The quick brown fox jumps over the lazy dog.",
        "It's a truth universally acknowledged, that a single man in possession of a good fortune...",
        "I can't, won't, shouldn't; they'd've — maybe.", "e.g. i.e. etc. Mr. Dr. U.S.A.",
        "", " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\n\n\n", " \n ", "\t\t", "\t \t", " \t\n\r ",
        "a" * 7, "a" * 64, "a" * 300, " " * 33, "\n" * 40, "\t" * 40, "ab" * 50, "-" * 80, "=" * 31, "." * 12,
        "word\nword\n\nword\n\n\nword", "line one\r\nline two\r\n", "trailing spaces   ", "   leading spaces",
        "multiple    spaces   between     words", "tab\tseparated\tvalues\t1\t2", "mixed \t \n whitespace",
        "\u00a0non-breaking\u00a0space", "ideographic\u3000space", "thin\u2009space", "zero\u200bwidth\u200bspace",
        "en\u2002em\u2003spaces", "line\u2028separator", "para\u2029separator", "\u0085next line", "\x0bvt\x0cff",
        "\x00null\x01\x1f\x7f", "\ufeffBOM at start", "soft\u00adhyphen",
        "naïve café résumé", "Ünïcödé Ströñg", "façade coöperate", "ﬁ ligature ﬂ", "Ǆ ǅ ǆ Ǉ ǈ ǉ",
        "e\u0301 vs \u00e9", "a\u0308\u0301\u0323 stacked marks", " \u0301leading combining", "\u0301", "\u20dd\u20de",
        "Ελληνικά γράμματα", "Привет, как дела?", "Съешь же ещё этих мягких французских булок",
        "Українська мова", "Ქართული ენა", "Հայերեն", "עברית עם ניקוד: שָׁלוֹם", "مرحبا بالعالم", "اللُّغَة العَرَبِيَّة",
        "فارسی زبان", "हिन्दी भाषा", "नमस्ते दुनिया", "বাংলা", "ਪੰਜਾਬੀ", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "සිංහල",
        "ภาษาไทย", "ພາສາລາວ", "မြန်မာ", "ខ្មែរ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "ኢትዮጵያ", "ᏣᎳᎩ", "ᐃᓄᒃᑎᑐᑦ",
        "日本語のテキストです。", "東京都渋谷区", "ひらがな カタカナ ｶﾀｶﾅ", "中文测试，你好世界！", "繁體中文測試",
        "한국어 텍스트입니다", "한글 자모 ㄱㄴㄷ", "𠀀𠀁𠀂 CJK ext B", "〆〇〻", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３",
        "emoji 🚀🔥👍🏽 done", "😀😃😄😁😆", "👨‍👩‍👧‍👦 family", "👩🏽‍💻 technologist", "🏳️‍🌈 flag", "🇺🇸🇯🇵🇫🇷 flags",
        "❤️ ❤ ♥️", "1️⃣ 2️⃣ #️⃣", "🫠🫡🫶 new emoji", "🧑‍🤝‍🧑", "☃︎ text ☃️ emoji", "👍🏻👍🏼👍🏽👍🏾👍🏿",
        "𝐁𝐨𝐥𝐝 𝑰𝒕𝒂𝒍𝒊𝒄 𝔉𝔯𝔞𝔨𝔱𝔲𝔯", "∀x ∈ ℝ: x² ≥ 0", "∑_{i=1}^{n} i = n(n+1)/2", "½ ¼ ¾ ⅓ ⅛", "℃ ℉ Ω Å",
        "→ ← ↑ ↓ ⇒ ⇔", "© ® ™ § ¶ † ‡", "€100 £50 ¥1000 ₹500 ₿0.1", "“smart quotes” ‘single’ «guillemets» „low“",
        "em—dash en–dash hyphen-minus", "ellipsis… bullet • middle·dot",
        "\ue000\ue001 private use", "\U000f0000 supplementary private", "\ufffd replacement", "\ufffe\uffff nonchars",
        "\U0010fffd last plane", "\U0001d11e music", "\U0001f9ff nazar", "ᚠᚢᚦᚨᚱᚲ runes", "𓀀𓀁 hieroglyphs",
        "ⰀⰁ glagolitic", "ꙮ multiocular o", "ǅǆǇ ẞ ß", "İstanbul ıi", "Σίσυφος ς σ",
        "1234567890 3.14159 -0.001", "0", "00", "007", "1,000,000.00", "1e10 2E-5", "0xDEADBEEF 0b1010 0o777",
        "2024-01-15T10:30:00Z", "+1 (555) 123-4567", "192.168.0.1:8080", "v1.2.3-beta.4+build.5", "٠١٢٣٤٥٦٧٨٩",
        "१२३ ௧௨௩", "Ⅻ ⅻ ① ⑳", "１２３４５",
        "https://example.com/path?q=1&x=2", "mailto:someone@example.org", "C:\\Users\\name\\file.txt",
        "/usr/local/bin/swift --version", "user@host:~$ ls -la | grep '.swift'",
        'x="quoted" \'single\'', "`backticks` and ```fences```", "<div class=\"a\">html</div>",
        "<html><body><p>para</p></body></html>", "<table><tr><td>1</td></tr></table>", "&amp; &lt; &gt; &#x27;",
        "{\"json\": [1, 2, {\"k\": null}]}", "key: value\nlist:\n  - a\n  - b", "# Heading\n\n* item\n* item",
        "| a | b |\n|---|---|\n| 1 | 2 |", "[link](http://x.y) ![img](a.png)", "**bold** _it_ ~~strike~~",
        "    indented code():\n        return 42", "def f(x):\n\treturn x * 2\n", "if (a && b || !c) { return; }",
        "for i in 0..<10 { print(i) }", "let s = \"\\(x)\\n\\t\"", "SELECT * FROM t WHERE id = 1;",
        "#include <stdio.h>\nint main(void) { return 0; }", "λx.x (\\x -> x)", "a += 1; b -= 2; c *= 3; d /= 4",
        "func<T: Sendable>(_ t: T) async throws -> [T]", "x<<2 >>3 <=> => -> <- ::", "$var @attr %mod ^xor ~not",
        "regex: ^[a-z]+\\d{2,3}$", "camelCase snake_case kebab-case PascalCase SCREAMING_CASE",
        "<start_of_turn>user\nHi<end_of_turn>\n", "<start_of_turn>model\nSure!<end_of_turn>", "<bos>text<eos>",
        "<eos><eos><eos>", "<<eos>>", "<eos", "eos>", "<start_of_tur", "<start_of_turn", "start_of_turn>",
        "<START_OF_TURN>", "< eos >", "<bos> <bos>", " <eos> ", "text<pad>text", "<unk><mask>", "[multimodal]x",
        "<start_of_image><end_of_image>", "<unused0><unused1><unused98><unused99>", "<unused6241><unused6242>",
        "<table><caption>c</caption></table>", "<h1>Title</h1>", "<strong>s</strong><em>e</em>", "<code>x</code>",
        "<b><i><u>x</u></i></b>", "<a>link</a><img>", "\t<td>\n", "text\n<end_of_turn>\n\n<start_of_turn>",
        "<start_of_turn><end_of_turn>", "<<start_of_turn>>", "a<start_of_turn>b", "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
        "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t", "▁ already has the marker", "▁▁▁", "a▁b",
        "<0x41> literal byte token text", "<0xE2><0x82><0xAC>", "\u2581\u2581 x",
        "The year 1984 and the number 3.141592653589793238462643383279",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
        "Donaudampfschifffahrtsgesellschaftskapitän", "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    ]
    # Byte fallback: scalars the vocabulary lacks, found by asking the library.
    return texts


def english_paragraphs(rng, count):
    words = (
        "the of and to in is was for that with as on by at from it an be this which or are have had not "
        "but were his they their has been one all would there can more when who will some if about no out "
        "up into so time them these could other than then only its may two like over such our any also new "
        "after first well where much way many those even most made before because through between long "
        "system model token server request response inference memory latency throughput cloud container "
        "image layer registry build deploy cache stream decode encode prompt answer question language"
    ).split()
    paragraphs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(3, 12)):
            n = rng.randint(4, 18)
            sentence = " ".join(rng.choice(words) for _ in range(n))
            sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!", ";", ":"])
            if rng.random() < 0.2:
                sentence += " (" + str(rng.randint(0, 99999)) + ")"
            sentences.append(sentence)
        paragraphs.append(" ".join(sentences) + rng.choice(["", "\n", "\n\n", " "]))
    return paragraphs


RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
    (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
    (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x21FF), (0x2200, 0x22FF), (0x2500, 0x25FF),
    (0x2600, 0x27BF), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFB00, 0xFFFD),
    (0xFE00, 0xFE0F), (0x10000, 0x1007F), (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF),
    (0xE0000, 0xE007F), (0xF0000, 0xF00FF), (0x0, 0x10FFFF),
]


def random_scalar(rng):
    low, high = rng.choice(RANGES)
    while True:
        c = rng.randint(low, high)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def random_texts(rng, count):
    texts = []
    for _ in range(count):
        n = rng.randint(1, 40)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.08:
                parts.append(rng.choice(SPECIAL_STRINGS))
            elif r < 0.18:
                parts.append(rng.choice([" ", "  ", "\n", "\t", "\n\n", " \n", "\u200d", "\ufe0f"]))
            else:
                parts.append(random_scalar(rng))
        texts.append("".join(parts))
    return texts


def gemma_cases(tok):
    rng = random.Random(20250301)
    texts = gemma_texts() + english_paragraphs(rng, 12) + random_texts(rng, 170)
    # Scalars the vocabulary lacks (byte fallback), discovered with the library itself.
    vocab = tok.get_vocab()
    missing = []
    probe = random.Random(7)
    while len(missing) < 40:
        c = random_scalar(probe)
        if c not in vocab and c not in missing and ord(c) > 0x7F:
            missing.append(c)
    texts += ["".join(missing[i:i + 4]) + " mixed with text " + missing[i] for i in range(0, 40, 4)]
    texts += [missing[i] for i in range(10)]
    texts.append(" ".join(english_paragraphs(random.Random(99), 6)))  # one long line, no newlines

    cases = []
    for index, text in enumerate(texts):
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        case = {
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decodedSkippingSpecial": tok.decode(ids, skip_special_tokens=True),
        }
        tok.encode_special_tokens = True
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        if plain != ids:
            case["idsNotParsingSpecial"] = plain
        if index < 25:
            case["idsWithSpecial"] = tok.encode(text, add_special_tokens=True).ids
        cases.append(case)
    return cases


def decode_cases(tok):
    """Random id sequences, heavy in byte-fallback and special tokens: runs that are not valid UTF-8
    only come up when decoding model output, never from encoding text."""
    rng = random.Random(4242)
    byte_ids = list(range(238, 238 + 256))
    utf8_pieces = [list("é€😀𠀀".encode()), list("€".encode())[:2], list("😀".encode())[:3], [0xFF], [0xC0, 0x80],
                   [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82], [0x41], [0x0A]]
    special = [0, 1, 2, 3, 4, 105, 106, 255999, 256000, 262143]
    common = [9259, 1902, 26352, 138, 236743, 107, 108, 255968, 5, 168, 496, 3823, 236761]
    cases = []
    for _ in range(120):
        ids = []
        for _ in range(rng.randint(1, 24)):
            r = rng.random()
            if r < 0.3:
                ids += [238 + b for b in rng.choice(utf8_pieces)]
            elif r < 0.45:
                ids.append(rng.choice(byte_ids))
            elif r < 0.6:
                ids.append(rng.choice(special))
            elif r < 0.85:
                ids.append(rng.choice(common))
            elif r < 0.97:
                ids.append(rng.randrange(0, 262144))
            else:
                ids.append(rng.choice([262144, 300000]))  # out of range: ignored
        cases.append({
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decodedSkippingSpecial": tok.decode(ids, skip_special_tokens=True),
        })
    return cases


def tiny_vocab(with_bytes="all"):
    merges = [
        ("▁", "t"), ("h", "e"), ("▁t", "he"), ("a", "a"), ("aa", "a"), ("a", "b"), ("b", "c"), ("ab", "c"),
        ("a", "bc"), ("▁", "a"), ("o", "n"), ("on", "y"), ("y", "e"), ("ye", "s"), ("▁", "▁"), ("▁▁", "▁▁"),
        ("e", "r"), ("▁", "h"), ("▁h", "er"), ("i", "s"), ("▁", "is"), ("s", "▁"), ("n", "o"), ("▁", "no"),
        ("x", "y"), ("é", "t"), ("▁", "é"), ("t", "▁"),
    ]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in "abcdefghijklmnopqrstuvwxyz▁é.,!?ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'\n":
        vocab.setdefault(c, len(vocab))
    if with_bytes == "all":
        for b in range(256):
            vocab["<0x%02X>" % b] = len(vocab)
    elif with_bytes == "some":
        for b in [0xE2, 0x82, 0xAC, 0xF0, 0x9F]:
            vocab["<0x%02X>" % b] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def synthetic_tokenizers():
    specs = []

    def build(name, *, bytes_="all", byte_fallback=True, fuse_unk=True, ignore_merges=False, split=None,
              decoder="gemma", post=None, added=()):
        vocab, merges = tiny_vocab(bytes_)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=fuse_unk,
                                   byte_fallback=byte_fallback, ignore_merges=ignore_merges))
        tok.normalizer = normalizers.Replace(" ", "▁")
        if split is not None:
            pattern, behavior, invert = split
            tok.pre_tokenizer = pre_tokenizers.Split(pattern, behavior, invert=invert)
        if decoder == "gemma":
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        elif decoder == "after":
            tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Replace("▁", "_"),
                                             decoders.Replace("é", "e"), decoders.Fuse()])
        if post is not None:
            tok.post_processor = post
        for token, special in added:
            if special:
                tok.add_special_tokens([token])
            else:
                tok.add_tokens([token])
        specs.append((name, tok))

    flags = [
        (AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=True), True),
        (AddedToken("ony", single_word=True, normalized=False), False),
        (AddedToken("yes no", normalized=True), False),
        (AddedToken("[SEP]", normalized=False, special=True), True),
        (AddedToken("[S", normalized=False), False),
        (AddedToken("x y", single_word=True, lstrip=True, normalized=True), False),
        (AddedToken("<r>", rstrip=True, normalized=False, special=True), True),
        (AddedToken("<l>", lstrip=True, normalized=False, special=False), False),
        (AddedToken("é", single_word=True, normalized=False, special=False), False),
    ]
    bos_eos = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    build("gemma-like with added-token flags", split=(" ", "merged_with_previous", False), added=flags,
          post=processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)]))
    build("split isolated, no byte fallback, fused unk", byte_fallback=False, split=("▁", "isolated", False))
    build("split removed, unk not fused", byte_fallback=False, fuse_unk=False, split=("▁", "removed", False))
    build("split merged with previous", split=("▁", "merged_with_previous", False), post=bos_eos)
    build("split merged with next", split=("▁", "merged_with_next", False))
    build("split contiguous", split=("▁", "contiguous", False))
    build("split inverted", split=("▁", "isolated", True))
    build("partial byte tokens", bytes_="some", fuse_unk=True)
    build("ignore merges", ignore_merges=True, split=("▁", "merged_with_next", False))
    build("replace after byte fallback", decoder="after")
    build("no decoder", decoder=None, added=flags[:4])
    return specs


SYNTHETIC_TEXTS = [
    "", " ", "the", "the the", " the", "the ", "  the  he  ", "aaaa", "aaaaaaa", "abc", "abcabc", "aabc", "ababc",
    "yes no", "yes  no", "yesno", "  yes no  ", "hello world", "HELLO", "is this his?", "no, no, no!",
    "<mask>", "a <mask> b", "a<mask>b", "  <mask>  ", "a\t<mask>\tb", "<mask><mask>", " <mask> <mask> ",
    "ony", "a ony b", "aony", "onyb", "ony,ony", "phony", "-ony-", "é ony é", "\u0301ony",
    "[SEP]", "[S", "[SE", "a[SEP]b", "[S[SEP]", "x y", "ax y", "x yb", " x y ", "x  y", "zx y", "<r>  a",
    "a <r> b", "a <l> b", "  <l>", "<r>\u3000\u2000x", "é", "aé", "é.", "été", " é ", "éé",
    "€", "a€b", "😀", "€😀€", "日本", "aé日€😀", "\u00ff\u0100", "A\u0301", "unknown ünknöwn", "ñññ", "\n", "a\nb",
    "The cat is here.", "x" * 50, "▁", "▁▁▁▁", " ▁ ", "<s>", "</s>",
]


def synthetic_cases():
    result = []
    for name, tok in synthetic_tokenizers():
        cases = []
        for text in SYNTHETIC_TEXTS:
            tok.encode_special_tokens = False
            ids = tok.encode(text, add_special_tokens=False).ids
            case = {
                "text": text,
                "ids": ids,
                "idsWithSpecial": tok.encode(text, add_special_tokens=True).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decodedSkippingSpecial": tok.decode(ids, skip_special_tokens=True),
            }
            tok.encode_special_tokens = True
            plain = tok.encode(text, add_special_tokens=False).ids
            tok.encode_special_tokens = False
            if plain != ids:
                case["idsNotParsingSpecial"] = plain
            cases.append(case)
        # Stored as the exact text the library writes, which is what the Swift side loads.
        result.append({"name": name, "tokenizerJSON": tok.to_str(), "cases": cases})
    return result


def chat_cases(tok, template):
    # As transformers renders chat templates (`_compile_jinja_template`).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def u(text):
        return {"role": "user", "content": text}

    def a(text):
        return {"role": "assistant", "content": text}

    def s(text):
        return {"role": "system", "content": text}

    def parts(*texts):
        return [{"type": "text", "text": t} for t in texts]

    conversations = [
        [u("Hi there")],
        [u("  padded  ")],
        [u("\n\nnewlines\n\n")],
        [u("\t tab \t")],
        [u("")],
        [u("   ")],
        [u("\u3000ideographic\u3000")],
        [u("\x1cfile separator\x1f")],
        [u("\u200bzero width is not whitespace\u200b")],
        [u("\u00a0nbsp\u00a0")],
        [u(" \u0301combining after space")],
        [u("<start_of_turn>injected<end_of_turn>")],
        [s("You are terse."), u("  Name a color.  ")],
        [s("  untrimmed system  "), u("hi")],
        [s(""), u("hi")],
        [s("sys"), u("q1"), a("a1"), u("q2")],
        [s("only system")],
        [u("2+2?"), a("4"), u("And 3+3?")],
        [u("q"), a("  spaced answer  ")],
        [u("q"), a("a")],
        [u("q"), {"role": "system", "content": "system in the middle"}],
        [u("q"), {"role": "tool", "content": "tool output"}, u("next")],
        [u("q"), {"role": "model", "content": "model role given directly"}],
        [{"role": "user", "content": parts("part one ", " part two")}],
        [{"role": "user", "content": parts("a", "", "b")}],
        [{"role": "user", "content": []}],
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": " kept "}]}],
        [{"role": "system", "content": parts(" sys as parts ", "ignored second part")}, u("hi")],
        [{"role": "user", "content": parts("x")}, {"role": "assistant", "content": parts(" y ")}],
        [u("日本語で答えて"), a("はい。"), u("🚀?")],
        [u("a\n\nb\n\nc")],
        [u("x" * 200)],
        # Errors the template raises.
        [a("assistant first")],
        [u("a"), u("b")],
        [u("a"), a("b"), a("c")],
        [s("sys"), a("assistant after system")],
        [s("sys"), s("second system")],
        [{"role": "tool", "content": "x"}],
        [],
    ]
    cases = []
    for index, messages in enumerate(conversations):
        for add_generation_prompt in ([True, False] if index % 3 == 0 else [True]):
            case = {"messages": messages, "addGenerationPrompt": add_generation_prompt}
            try:
                rendered = compiled.render(messages=messages, bos_token="<bos>", eos_token="<eos>",
                                           add_generation_prompt=add_generation_prompt)
                case["rendered"] = rendered
                case["ids"] = tok.encode(rendered, add_special_tokens=False).ids
            except Exception as error:  # the template's raise_exception or a Jinja undefined error
                case["error"] = str(error)
            cases.append(case)
    return cases


def main():
    with gzip.open(os.path.join(HERE, "tokenizer.json.gz"), "rb") as f:
        tok = Tokenizer.from_str(f.read().decode("utf-8"))
    with open(os.path.join(HERE, "tokenizer_config.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    document = {
        "generator": "make-cases.py with tokenizers %s, jinja2 %s" % (tokenizers.__version__, jinja2.__version__),
        "tokenization": gemma_cases(tok),
        "decoding": decode_cases(tok),
        "chat": chat_cases(tok, template),
        "synthetic": synthetic_cases(),
    }
    path = os.path.join(HERE, "tokenizer-cases.json")
    with open(path, "w", encoding="utf-8") as f:
        # One case per line keeps diffs readable without the size of full indentation.
        f.write("{\n")
        keys = list(document)
        for k, key in enumerate(keys):
            value = document[key]
            f.write(json.dumps(key) + ": ")
            if isinstance(value, list):
                f.write("[\n")
                f.write(",\n".join(json.dumps(item, ensure_ascii=False) for item in value))
                f.write("\n]")
            else:
                f.write(json.dumps(value, ensure_ascii=False))
            f.write(",\n" if k < len(keys) - 1 else "\n")
        f.write("}\n")
    counts = {key: len(value) for key, value in document.items() if isinstance(value, list)}
    print("wrote %s (%d bytes): %s" % (path, os.path.getsize(path), counts))


if __name__ == "__main__":
    main()
