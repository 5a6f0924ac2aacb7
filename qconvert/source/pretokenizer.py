"""Name the llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) that a tokenizer.json describes.

llama.cpp's own converter encodes a check string with transformers and looks the hash of
the ids up in a list of known models, so a new fine-tune with a known tokenizer passes
only if someone hashed that exact model. Here the name is derived from what the file
says: the pre_tokenizer chain is turned into the list of regexes it applies, both that
list and llama.cpp's (pretokenizer_table.py) are brought to one spelling, and the names
whose lists are equal are candidates. Loader flags break ties (see the table's docstring).
"""

from __future__ import annotations

from ..errors import InputError, UnsupportedError
from .pretokenizer_table import GPT2, KNOWN_PRETOKENIZERS, LLAMA_CPP_PRE_NAMES, PUNCT_RUN

# HF ByteLevel(use_regex=true) splits with the GPT-2 regex plus a catch-all "|\s+".
BYTELEVEL_REGEX = GPT2 + r"|\s+"

# llama.cpp spells \p{Lu}-style classes as lookaheads (see pretokenizer_table.py).
_SPELLINGS = (
    (r"((?=[\p{L}])([^a-z]))", r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
    (r"((?=[\p{L}])([^A-Z]))", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
)
_CONTROL_CHARS = {"\r": r"\r", "\n": r"\n", "\t": r"\t"}


def _scan(regex: str):
    """Yield (token, in_class) over a regex: an escape (\\x or \\p{..}) is one token."""
    i, in_class = 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            end = i + 2
            if regex[i + 1:i + 3] in ("p{", "P{"):
                end = regex.index("}", i) + 1
            yield regex[i:end], in_class
            i = end
            continue
        if c == "[" and not in_class:
            yield c, False
            in_class = True
        elif c == "]" and in_class and regex[i - 1] != "[":
            in_class = False
            yield c, False
        else:
            yield c, in_class
        i += 1


def _expand_case_groups(regex: str) -> str:
    """'(?i:'s|'t)' -> "(?:'[sS]|'[tT])", the form llama.cpp's std::regex can run."""
    out, i = [], 0
    while (start := regex.find("(?i:", i)) >= 0:
        out.append(regex[i:start] + "(?:")
        depth, j, body = 1, start + 4, []
        for tok, in_class in _scan(regex[start + 4:]):
            j += len(tok)
            if not in_class and tok == "(":
                depth += 1
            elif not in_class and tok == ")":
                depth -= 1
                if depth == 0:
                    break
            if len(tok) == 1 and tok.isascii() and tok.isalpha():
                pair = tok.lower() + tok.upper()
                tok = pair if in_class else f"[{pair}]"
            body.append(tok)
        out.append("".join(body) + ")")
        i = j
    out.append(regex[i:])
    return "".join(out)


def _drop_possessive(regex: str) -> str:
    """'x?+' -> 'x?': llama.cpp runs possessive quantifiers as greedy ones."""
    out: list[str] = []
    prev = ""
    for tok, in_class in _scan(regex):
        if tok == "+" and not in_class and prev in ("?", "+", "*"):
            prev = ""
            continue
        out.append(tok)
        prev = tok if not in_class else ""
    return "".join(out)


def canonical(regex: str) -> str:
    """One spelling for equal regexes as HF and llama.cpp write them."""
    for raw, escaped in _CONTROL_CHARS.items():
        regex = regex.replace(raw, escaped)
    regex = _drop_possessive(_expand_case_groups(regex))
    for theirs, ours in _SPELLINGS:
        regex = regex.replace(theirs, ours)
    # llama.cpp's splitter keeps text no alternative matched, so a final catch-all "\s+"
    # after "\s+(?!\S)" changes nothing there; GPT-2's list drops it, Llama 3's keeps it.
    if regex.endswith(r"\s+(?!\S)|\s+"):
        regex = regex[: -len(r"|\s+")]
    return regex


def _is_total(regex: str) -> bool:
    # Ends in a bare whitespace run after alternatives for letters, digits and the rest:
    # every character falls in some match, so no gap is ever left between matches.
    return regex.replace("\n", r"\n").endswith(r"|\s+")


def chain_of(pre: dict | None) -> list[str]:
    """The regexes a tokenizer.json pre_tokenizer applies, in order, canonical spelling.

    A step llama.cpp cannot express becomes a '<...>' marker that matches no entry."""
    if pre is None:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        return [r for step in pre.get("pretokenizers", []) for r in chain_of(step)]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        behavior, invert = pre.get("behavior"), bool(pre.get("invert", False))
        if "Regex" not in pattern:
            return [f"<Split String {pattern.get('String')!r} {behavior}>"]
        regex = pattern["Regex"]
        if (behavior, invert) == ("Isolated", False):
            return [canonical(regex)]
        # Keeping only matches equals keeping matches and gaps when there are no gaps.
        if (behavior, invert) == ("Removed", True) and _is_total(regex):
            return [canonical(regex)]
        return [f"<Split {behavior} invert={invert} {regex!r}>"]
    if kind == "ByteLevel":
        steps = ["<ByteLevel add_prefix_space>"] if pre.get("add_prefix_space") else []
        if pre.get("use_regex", True):
            steps.append(canonical(BYTELEVEL_REGEX))
        return steps
    if kind == "Digits":
        return [r"\p{N}" if pre.get("individual_digits") else r"\p{N}+"]
    if kind == "Punctuation":
        if pre.get("behavior", "Isolated") == "Contiguous":
            return [canonical(PUNCT_RUN)]
        return [f"<Punctuation {pre.get('behavior', 'Isolated')}>"]
    return [f"<{kind}>"]


def _chains(entry: dict) -> list[tuple[str, ...]]:
    return [tuple(canonical(r) for r in chain) for chain in (entry["regex"], *entry.get("also", ()))]


def candidates(chain: list[str]) -> list[str]:
    """Names whose llama.cpp regex list equals the chain, in table order."""
    key = tuple(chain)
    return [name for name, entry in KNOWN_PRETOKENIZERS.items() if key in _chains(entry)]


def derive_pre(tokenizer_json: dict, tokenizer_config: dict | None = None,
               source: str = "tokenizer.json") -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer.json."""
    chain = chain_of(tokenizer_json.get("pre_tokenizer"))
    names = candidates(chain)
    if not names:
        shown = " > ".join(chain) if chain else "(no pre_tokenizer)"
        raise UnsupportedError(
            f"{source}: the pre-tokenizer regexes [{shown}] match none llama.cpp knows "
            f"by structure; pass --vocab-pre NAME with the llama.cpp name for this tokenizer "
            f"(derivable: {', '.join(KNOWN_PRETOKENIZERS)})")
    flags = {
        "ignore_merges": bool(tokenizer_json.get("model", {}).get("ignore_merges", False)),
        "clean_spaces": (tokenizer_config or {}).get("clean_up_tokenization_spaces"),
    }

    def agreement(name: str) -> int:
        entry, score = KNOWN_PRETOKENIZERS[name], 0
        for flag, value in flags.items():
            expected = entry.get(flag)
            if isinstance(value, bool) and isinstance(expected, bool):
                score += 1 if value == expected else -1
        return score

    # max() keeps the first of equal scores: table order breaks the remaining ties.
    return max(names, key=agreement)


def choose_pre(tokenizer_json: dict, tokenizer_config: dict | None, override: str | None,
               source: str = "tokenizer.json") -> str:
    """The override when given (checked against llama.cpp's names), else the derived name."""
    if override is not None:
        if override not in LLAMA_CPP_PRE_NAMES:
            raise InputError(
                f"--vocab-pre {override!r} is not a pre-tokenizer llama.cpp knows; "
                f"choose one of: {', '.join(sorted(LLAMA_CPP_PRE_NAMES))}")
        return override
    return derive_pre(tokenizer_json, tokenizer_config, source)
