"""``efi_fnmatch()``: the glob matching systemd-boot applies to ``default`` and EFI variables.

``*`` any run, ``?`` one character, ``[abc]`` / ``[a-z]`` a set (no negation), ``\\x`` a literal.
An unterminated ``[`` never matches. Both sides are folded to lower case by the caller.
"""

from __future__ import annotations


def efi_fnmatch(pattern: str, s: str) -> bool:
    """Classic wildcard matching with backtracking to the last ``*``: linear in practice,
    never exponential on hostile patterns."""
    toks = _tokens(pattern)
    if toks is None:
        return False
    ti = si = 0
    star_ti = -1
    star_si = 0
    while si < len(s):
        if ti < len(toks) and toks[ti] != "*" and _tok_match(toks[ti], s[si]):
            ti += 1
            si += 1
        elif ti < len(toks) and toks[ti] == "*":
            star_ti, star_si = ti, si
            ti += 1
        elif star_ti >= 0:
            ti = star_ti + 1
            star_si += 1
            si = star_si
        else:
            return False
    while ti < len(toks) and toks[ti] == "*":
        ti += 1
    return ti == len(toks)


def _tokens(p: str) -> list[str] | None:
    """Split a pattern into "*", "?", "[set]" and single literal characters ("\\x" -> "x")."""
    out: list[str] = []
    i = 0
    while i < len(p):
        c = p[i]
        if c == "[":
            end = p.find("]", i + 1)
            if end < 0:
                return None
            out.append(p[i : end + 1])
            i = end + 1
            continue
        if c == "\\" and i + 1 < len(p):
            out.append("\\" + p[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return out


def _tok_match(tok: str, ch: str) -> bool:
    if tok == "?":
        return True
    if tok.startswith("[") and len(tok) >= 2 and tok.endswith("]"):
        return _in_set(tok[1:-1], ch)
    if tok.startswith("\\") and len(tok) == 2:
        return tok[1] == ch
    return tok == ch


def _in_set(body: str, ch: str) -> bool:
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= ch <= body[i + 2]:
                return True
            i += 3
        else:
            if body[i] == ch:
                return True
            i += 1
    return False
