"""Classification filters: a person's spelling of a class turned into the prefix that figure
records store (`uspto_xml` writes `LOCARNO:1403`, `CPC:A61C 8/0089`, `IPC:A61C 8/00`,
`USPC:D14341`).

A filter is a prefix of the stored string: `LOCARNO:14` keeps every Locarno subclass of class 14,
`CPC:A61C` every group of subclass A61C. Each scheme's prefix is checked against that scheme's
levels, so that `LOCARNO:1` (classes 10 to 19 by accident of spelling) is refused rather than
silently matching ten classes.
"""

from __future__ import annotations

import re

SCHEMES = ("LOCARNO", "CPC", "IPC", "USPC")
_ALIASES = {"LOC": "LOCARNO", "LOCARNO": "LOCARNO", "CPC": "CPC", "IPC": "IPC", "USPC": "USPC", "US": "USPC"}
EXAMPLES = "LOCARNO:14, LOCARNO:1403, 14-03, CPC:A61C, CPC:A61C 8/00, USPC:D14"

_SCHEMED = re.compile(r"^(?P<scheme>[A-Za-z]+)\s*[:\s]\s*(?P<symbol>\S.*)$")
_LOCARNO = re.compile(r"^\d{2}(?:[-.\s]?\d{2})?$")  # class 14, subclass 1403 / 14-03 / 14.03
# CPC / IPC: section, class, subclass, then main group and subgroup ("A61C 8/0089").
_CPC = re.compile(r"^(?P<head>[A-HY](?:\d{2}(?:[A-Z])?)?)(?:\s*(?P<group>\d{1,4})(?:/(?P<sub>\d{0,6}))?)?$")
_USPC = re.compile(r"^(?:D|PLT|\d)[0-9A-Z .]*$")


class ClassificationError(ValueError):
    """A classification filter that names no class of a known scheme; the message says why."""


def class_prefix(text: str | None) -> str | None:
    """The stored-form prefix of a person's classification filter (None or blank: no filter).

    Accepted: the stored form itself (`LOCARNO:14`, `CPC:A61C`, `USPC:D14`; the scheme in any
    case, `:` or a space after it), a bare Locarno class or subclass (`14`, `1403`, `14-03`,
    `14.03`) and a bare CPC subclass or group (`A61C`, `A61C 8/00`). Raises ClassificationError.
    """
    if text is None or not text.strip():
        return None
    spelled = " ".join(text.split())
    match = _SCHEMED.match(spelled)
    if match and match.group("scheme").upper() in _ALIASES:
        scheme, symbol = _ALIASES[match.group("scheme").upper()], match.group("symbol").strip()
    elif _LOCARNO.match(spelled):
        scheme, symbol = "LOCARNO", spelled
    elif (bare := _CPC.match(spelled.upper())) and len(bare.group("head")) == 4:
        # Bare, only a full subclass reads as CPC: "D14" could as well be the USPC design class.
        scheme, symbol = "CPC", spelled
    else:
        raise ClassificationError(
            f"classification {text!r}: not a class of {', '.join(SCHEMES)} (for example {EXAMPLES})"
        )
    return f"{scheme}:{_symbol(scheme, symbol, text)}"


def _symbol(scheme: str, symbol: str, text: str) -> str:
    if scheme == "LOCARNO":
        if not _LOCARNO.match(symbol):
            raise ClassificationError(
                f"classification {text!r}: a Locarno class is 2 digits (14) and a subclass 4 (1403 or 14-03)"
            )
        return re.sub(r"[-.\s]", "", symbol)
    if scheme in ("CPC", "IPC"):
        match = _CPC.match(symbol.upper())
        if not match:
            raise ClassificationError(
                f"classification {text!r}: a {scheme} symbol is a section, class and subclass, then "
                "a group (A, A61, A61C, A61C 8/00)"
            )
        head, group, sub = match.group("head"), match.group("group"), match.group("sub")
        if group is None:
            return head
        if len(head) != 4:
            raise ClassificationError(
                f"classification {text!r}: a {scheme} group needs a subclass (A61C 8/00)"
            )
        # "A61C 8" is group 8 and its subgroups, not groups 80-89: the slash ends the group.
        return f"{head} {group}/{sub or ''}"
    upper = symbol.upper()
    if not _USPC.match(upper):
        raise ClassificationError(
            f"classification {text!r}: a USPC class is as the grant writes it (D14, 439)"
        )
    return upper
