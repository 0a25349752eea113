"""PII redaction: e-mail addresses, phone numbers, US SSNs, credit-card numbers, IP addresses.

Each type is a candidate regex followed by a check that regexes cannot express (a known
top-level domain, the SSN ranges never issued, the Luhn checksum and the card issuer's
prefix, `ipaddress` parsing), because the cost of a false match is real: a version number or
an ISBN replaced by <PHONE> is damaged text. What looks like an address in the documentation
ranges (example.com, 192.0.2.0/24, private and loopback networks) names nobody and is kept by
default, as datatrove's PIIFormatter keeps non-public IPs.

Person names need a named-entity model; the `person` type uses a spaCy pipeline when the
config asks for it, and is off by default.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tokenmill.curate.block import BlockStats, DocumentBlock
from tokenmill.sources.document import Document

PIIType = Literal["email", "phone", "ssn", "credit_card", "ip_address", "person"]
REGEX_TYPES: tuple[PIIType, ...] = ("email", "phone", "ssn", "credit_card", "ip_address")
PLACEHOLDERS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ssn": "<SSN>",
    "credit_card": "<CREDIT_CARD>",
    "ip_address": "<IP_ADDRESS>",
    "person": "<PERSON>",
}
_PRIORITY: tuple[PIIType, ...] = ("email", "credit_card", "ssn", "ip_address", "phone", "person")
_PERSON_LABELS = ("PERSON", "PER")  # OntoNotes models say PERSON, WikiNER models PER
# RFC 2606 names, reserved for examples: an address there belongs to nobody.
EXAMPLE_DOMAINS = ["example.com", "example.org", "example.net"]

# --- e-mail -----------------------------------------------------------------------------
# The practical subset of RFC 5322 that people write; the top-level domain is checked against
# the public suffix list (the `tld` package), which rejects look-alikes such as
# `sd_in@devanagari.utf8`, `-i@include.lst` or `user@1000.service`.
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_.%+-]{1,64}$")
_EMAIL_DOMAIN = re.compile(
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63}))(?![\w-]|\.\w)"
)
# Hosts of private networks: the user name in front of them is still someone's.
_PRIVATE_TLDS = {"local", "localdomain", "lan", "internal"}

# The regexes below start with a lookahead such as (?=\d): `re` turns it into a character-set
# prefix and skips to candidate characters in C, which more than doubles the speed of a scan.

# --- IP addresses -----------------------------------------------------------------------
# Not inside a longer dotted or dashed run (OIDs, `1.2.3.4.5`, Debian versions `1:0.9.0.2-4`,
# `libfoo-1.2.3.4`, `1.2.3.4+dfsg`); each octet is checked by `ipaddress`, which also refuses
# leading zeros.
_IPV4 = re.compile(r"(?=\d)(?<![\w.+-])(?<!\d:)(?:\d{1,3}\.){3}\d{1,3}(?![\w+~-]|\.\w)")
# A four-part version number is also a valid address. Two signs tell them apart: small parts
# (first below 20, the others below 100: 2.10.4.1, 3.6.23.1, 4.3.99.16 — only 0.5% of the
# address space, and the public resolvers 8.8.8.8 and 1.1.1.1 among it, which name nobody),
# and a word or operator just before it (`Standards-Version: 3.9.8.0`, `zlib >= 1.2.2.3`,
# `version 11.8.172.15`, `section 8.2.4.44`).
_VERSION_CUE = re.compile(
    r"(?i)(?:\b(?:v|ver|version|versions|release|rel|standards|build|revision|rev|firmware|kernel|"
    r"linux|policy|update|updated|upgrade|patch|section|sections|chapter|rfc)\.?|§|[<>=]=?)"
    r"\s*(?:[:=#]|to|is|of)?\s*[\"'(\[]?$"
)
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
# Without "::" an IPv6 address has eight groups.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")
_IPV6 = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"
)

# --- US social security numbers ---------------------------------------------------------
# AAA-GG-SSSS; area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN_HINT = re.compile(r"\d-\d\d-\d")
_SSN = re.compile(r"(?=\d)(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-]|\.\d)")

# --- credit cards -----------------------------------------------------------------------
_CARD_HINT = re.compile(r"\d{4}[ -]?\d{4}[ -]?\d\d")  # every layout starts so
_CARD = re.compile(r"(?=\d)(?<![\w.,+-])\d{4}(?:[ -]?\d{2,6}){1,4}(?![\w]|[.,-]\d)")
# How card numbers are printed: one run of digits, or these groups with one kind of separator.
_CARD_GROUPS = {(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3), (4, 4, 5), (4, 4, 4, 1)}

# --- phone numbers ----------------------------------------------------------------------
# Three shapes, each needing the grouping that people print, so that dates, versions, ISBNs,
# hex dumps and columns of numbers do not qualify. A bare run of digits without "+" is never
# taken: it is as likely an order number or a timestamp.
_PHONE = re.compile(
    r"(?=[+(\d])(?<![\w+./~-])(?:"
    # international: +CC then groups (the "(0)" of "+49 (0)30" included)
    r"\+[1-9]\d{0,2}(?:[ .-]?\(0\))?(?:[ .-]?\(?\d{1,5}\)?){1,6}"
    # the others are never the continuation of a column of numbers or a hex dump
    r"|(?<!\d[ .:-])(?:"
    # North American: (555) 555-0199, 555-555-0199, 555.555.0199, 1-800-555-0199
    r"(?:1[ .-])?(?:\([2-9]\d{2}\) ?[2-9]\d{2}[ .-]\d{4}|[2-9]\d{2}([.-])[2-9]\d{2}\1\d{4})"
    # national with a trunk 0: 020 7946 0958, 01 23 45 67 89, 030/12345678, (0171) 123-4567
    r"|(?:\(0[1-9]\d{0,3}\) ?|0[1-9]\d{0,3}(?: ?/ ?|[ .-]))\d{2,8}(?:[ .-]\d{2,8}){0,3}"
    r"))(?![\w+]|[ .:-]\d)"
)
_AREA_CODE = re.compile(r"^\(?0\d*\)? ?(?:/ ?|[.-])?")
_INTL_DIGITS = (8, 15)  # E.164 allows at most 15 digits; fewer than 8 is not a full number
_NATIONAL_DIGITS = (10, 12)  # 9 would take US ZIP+4 codes such as 02110-1301


class PIIRedactor(DocumentBlock):
    """Replace personal data with placeholders (or drop documents that contain any)."""

    name: ClassVar[str] = "pii"
    # A document that could not be checked may still hold what this block exists to remove.
    drop_on_error: ClassVar[bool] = True

    mode: Literal["redact", "drop"] = "redact"
    types: list[PIIType] = Field(default_factory=lambda: list(REGEX_TYPES))
    placeholders: dict[PIIType, str] = Field(
        default_factory=lambda: dict(PLACEHOLDERS), description="Overrides merge with the defaults."
    )
    email_allow_domains: list[str] = Field(
        default_factory=lambda: list(EXAMPLE_DOMAINS),
        description="Addresses at these domains (and their subdomains) are kept.",
    )
    keep_non_public_ips: bool = Field(
        True, description="Keep private, loopback, link-local, multicast and documentation addresses."
    )
    ner_model: str = Field(
        "en_core_web_sm", description="spaCy pipeline (package name or path) for the `person` type."
    )

    _nlp: Any = PrivateAttr(None)

    def __getstate__(self) -> dict[str, Any]:
        # A worker loads the NER pipeline itself; the block travels as its settings only.
        state = super().__getstate__()
        state["__pydantic_private__"] = {**state["__pydantic_private__"], "_nlp": None}
        return state

    @field_validator("placeholders")
    @classmethod
    def _merge_placeholders(cls, v: dict[str, str]) -> dict[str, str]:
        return {**PLACEHOLDERS, **v}

    @model_validator(mode="after")
    def _check_ner_model(self) -> PIIRedactor:
        # Fail at config time, not on every document: with drop_on_error a missing model
        # would silently drop the whole corpus.
        if "person" in self.types and self.enabled:
            if importlib.util.find_spec("spacy") is None:
                raise ValueError("pii type 'person' needs spaCy: pip install spacy, plus a pipeline with an NER")
            if not Path(self.ner_model).exists() and not _is_package(self.ner_model):
                raise ValueError(
                    f"pii.ner_model {self.ner_model!r} is neither an installed spaCy package nor a folder "
                    f"(install one, e.g. `python -m spacy download en_core_web_sm`)"
                )
        return self

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        spans = self.find(doc.text)
        if not spans:
            return doc
        counts = Counter(kind for _, _, kind in spans)
        for kind, n in counts.items():
            stats.count(f"pii.{kind}", n)
        stats.count("pii.documents")
        redacted = self.redact(doc.text, spans)
        if self.mode == "drop":
            first = next(t for t in _PRIORITY if t in counts)
            detail = ", ".join(f"{k}={counts[k]}" for k in _PRIORITY if k in counts)
            # The sample kept in stats.json must not itself leak what was found.
            stats.remove(replace(doc, text=redacted), f"pii.{first}", detail)
            return None
        return replace(doc, text=redacted)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, type) spans of personal data, in text order."""
        spans: list[tuple[int, int, str]] = []
        for kind in self.types:
            spans.extend((s, e, kind) for s, e in getattr(self, f"_find_{kind}")(text))
        # Where two detectors claim the same characters the longer span wins, and on a tie the
        # more specific type (078-05-1120 is an SSN before it is a phone number).
        spans.sort(key=lambda s: (s[0], s[0] - s[1], _PRIORITY.index(s[2])))
        kept: list[tuple[int, int, str]] = []
        for span in spans:
            if not kept or span[0] >= kept[-1][1]:
                kept.append(span)
        return kept

    def redact(self, text: str, spans: list[tuple[int, int, str]]) -> str:
        parts, last = [], 0
        for start, end, kind in spans:
            parts += [text[last:start], self.placeholders[kind]]
            last = end
        parts.append(text[last:])
        return "".join(parts)

    # Each finder returns (start, end) pairs. A cheap test first (an '@', a digit pattern) spares
    # most documents the full regex.

    def _find_email(self, text: str) -> list[tuple[int, int]]:
        # Work outwards from each '@' rather than running a regex over the whole text.
        found: list[tuple[int, int]] = []
        at = text.find("@")
        while at != -1:
            span = self._email_at(text, at)
            if span:
                found.append(span)
            at = text.find("@", span[1] if span else at + 1)
        return found

    def _email_at(self, text: str, at: int) -> tuple[int, int] | None:
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if not local or not domain:
            return None
        start = local.start()
        while text[start] in ".%+-":
            start += 1
        if start == at or (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_.%+-")):
            return None  # no local part, or one longer than 64 characters
        from tld import is_tld  # noqa: PLC0415 — reads the suffix list only once an address is seen

        top = domain.group(2).lower()
        if top not in _PRIVATE_TLDS and not is_tld(top):
            return None
        host = domain.group(1).lower()
        if any(host == a.lower() or host.endswith("." + a.lower()) for a in self.email_allow_domains):
            return None
        return start, domain.end()

    def _find_ip_address(self, text: str) -> list[tuple[int, int]]:
        found = []
        if _IPV4_HINT.search(text):
            for m in _IPV4.finditer(text):
                octets = [int(o) for o in m.group().split(".")]
                if octets[0] < 20 and octets[0] != 10 and max(octets[1:]) < 100:
                    continue  # a version number (see _VERSION_CUE); 10.0.0.1 is the private network's
                line_start = text.rfind("\n", 0, m.start()) + 1
                if _VERSION_CUE.search(text, max(line_start, m.start() - 40), m.start()):
                    continue
                if self._is_personal_ip(m.group()):
                    found.append(m.span())
        if "::" in text or _IPV6_HINT.search(text):
            for m in _IPV6.finditer(text):
                groups = [g for g in re.split(r"[:.]", m.group()) if g]
                # `a[::2]`, `dead::beef`: too few groups to be an address anyone writes out;
                # `f9:2a:c2:77:29:f9:5c:00` is a string of bytes (a MAC address, a DUID).
                if len(groups) < 3 or all(len(g) == 2 for g in groups):
                    continue
                if self._is_personal_ip(m.group()):
                    found.append(m.span())
        return found

    def _is_personal_ip(self, candidate: str) -> bool:
        try:
            addr = ipaddress.ip_address(candidate)
        except ValueError:
            return False
        return not self.keep_non_public_ips or (addr.is_global and not addr.is_multicast)

    def _find_ssn(self, text: str) -> list[tuple[int, int]]:
        if not _SSN_HINT.search(text):
            return []
        return [m.span() for m in _SSN.finditer(text)]

    def _find_credit_card(self, text: str) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        if not _CARD_HINT.search(text):
            return found
        for m in _CARD.finditer(text):
            groups = tuple(len(g) for g in re.split(r"[ -]", m.group()))
            separators = set(re.findall(r"[ -]", m.group()))
            if len(groups) > 1 and (groups not in _CARD_GROUPS or len(separators) > 1):
                continue
            digits = re.sub(r"\D", "", m.group())
            if card_issuer(digits) and luhn_valid(digits):
                found.append(m.span())
        return found

    def _find_phone(self, text: str) -> list[tuple[int, int]]:
        found = []
        for m in _PHONE.finditer(text):
            start, end = m.span()
            number = m.group()
            if number.endswith(")") and number.count("(") < number.count(")"):
                number, end = number[:-1], end - 1  # the bracket closes the sentence's own "("
            digits = sum(c.isdigit() for c in number)
            if number[0] == "+":
                # Written as one run, "+2147483647" is more often a signed integer than a number
                # to call; a decimal such as "+35236450.6" ends in a one-digit group.
                separated = re.search(r"\d\D+\d", number) is not None
                plausible = (
                    (_INTL_DIGITS[0] if separated else 11) <= digits <= _INTL_DIGITS[1]
                    and len(re.split(r"\D+", number)[-1] or "xx") >= 2
                )
            elif number.startswith(("0", "(0")):
                # After the area code, one separator throughout: "01.02.2024 12:30" mixes two.
                subscriber = _AREA_CODE.sub("", number, count=1)
                plausible = (
                    _NATIONAL_DIGITS[0] <= digits <= _NATIONAL_DIGITS[1]
                    and len(set(re.findall(r"[ .-]", subscriber))) <= 1
                )
            else:
                plausible = True  # North American: the regex fixes the shape, 10 digits (11 with the 1)
            if plausible:
                found.append((start, end))
        return found

    def _find_person(self, text: str) -> list[tuple[int, int]]:
        if self._nlp is None:
            import spacy  # noqa: PLC0415 — optional, and slow to import

            self._nlp = spacy.load(self.ner_model)
        found = []
        # spaCy refuses texts above nlp.max_length; lines keep the chunks small and the offsets simple.
        offset = 0
        chunks = []
        for line in text.splitlines(keepends=True):
            if line.strip():
                chunks.append((offset, line))
            offset += len(line)
        for (start, _), parsed in zip(chunks, self._nlp.pipe(line for _, line in chunks)):
            found.extend((start + e.start_char, start + e.end_char) for e in parsed.ents if e.label_ in _PERSON_LABELS)
        return found


def _is_package(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a relative or dotted name whose parent is missing
        return False


def luhn_valid(digits: str) -> bool:
    """The check digit every payment card number ends with (ISO/IEC 7812)."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network whose issuer prefix (IIN) and length `digits` match, or None."""
    n, p2, p3, p4, p6 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= p3 <= 305 or p2 in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if 2200 <= p4 <= 2204 and 16 <= n <= 19:
        return "mir"
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763) and 13 <= n <= 19:
        return "maestro"
    return None
