"""A person's spelling of a classification filter becomes the prefix that figure records store."""

from __future__ import annotations

import pytest

from patent_assets.classifications import ClassificationError, class_prefix


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [
        ("LOCARNO:14", "LOCARNO:14"),
        ("LOCARNO:1403", "LOCARNO:1403"),
        ("14-03", "LOCARNO:1403"),
        ("14.03", "LOCARNO:1403"),
        ("14", "LOCARNO:14"),
        ("locarno 14-03", "LOCARNO:1403"),
        ("CPC:A61C", "CPC:A61C"),
        ("a61c", "CPC:A61C"),
        ("CPC:A61C 8/00", "CPC:A61C 8/00"),
        ("cpc:A61C8", "CPC:A61C 8/"),  # group 8, not groups 80-89
        ("IPC:A61C8/00", "IPC:A61C 8/00"),
        ("USPC:D14", "USPC:D14"),
        ("uspc:d 2", "USPC:D 2"),
        (None, None),
        ("  ", None),
    ],
)
def test_spellings_become_the_stored_prefix(spelled: str | None, stored: str | None) -> None:
    assert class_prefix(spelled) == stored


@pytest.mark.parametrize(
    ("spelled", "reason"),
    [
        ("LOCARNO:1", "2 digits"),  # would match classes 10-19 as a bare string prefix
        ("LOCARNO:140", "2 digits"),
        ("D14", "not a class"),  # USPC or CPC? the scheme must be said
        ("wheel", "not a class"),
        ("CPC:61C", "section, class and subclass"),
        ("CPC:A61 8/00", "needs a subclass"),
        ("USPC:../etc", "as the grant writes it"),
    ],
)
def test_a_spelling_of_no_class_is_refused_with_the_reason(spelled: str, reason: str) -> None:
    with pytest.raises(ClassificationError, match=reason):
        class_prefix(spelled)
