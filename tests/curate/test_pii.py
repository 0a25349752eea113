import pickle

import pytest
from harness import run_pipeline
from pydantic import ValidationError

from tokenmill.curate.block import BlockStats
from tokenmill.curate.pii import PIIRedactor, card_issuer, luhn_valid
from tokenmill.sources.document import Document


def redact(text: str, **config) -> str:
    block = PIIRedactor(**config)
    return block.redact(text, block.find(text))


# One realistic sentence per format; the expected text is exact, so a span that eats a
# neighbouring character or misses a "+" fails too.
FOUND = [
    # e-mail
    ("Patches to jane.doe@mail-server.co.uk, please.", "Patches to <EMAIL>, please."),
    ("-- Matthias Klose <doko@debian.org>  Fri, 30 Nov", "-- Matthias Klose <<EMAIL>>  Fri, 30 Nov"),
    ("Write to J.Smith+news@gmail.com or bob_99@Uni-Bonn.DE.", "Write to <EMAIL> or <EMAIL>."),
    ("(mailto:ranma42@tartaros.local)", "(mailto:<EMAIL>)"),
    # phone: North American
    ("Call (555) 555-0199 today.", "Call <PHONE> today."),
    ("Call 555-555-0199 or 555.555.0199.", "Call <PHONE> or <PHONE>."),
    ("Toll free: 1-800-555-0199.", "Toll free: <PHONE>."),
    ("Office +1 (555) 555-0199, fax +1.555.555.0198", "Office <PHONE>, fax <PHONE>"),
    # phone: UK, French, German, elsewhere
    ("London +44 20 7946 0958 or 020 7946 0958, mobile 07700 900123.", "London <PHONE> or <PHONE>, mobile <PHONE>."),
    ("Paris : +33 1 23 45 67 89, 01 23 45 67 89 ou 06.12.34.56.78", "Paris : <PHONE>, <PHONE> ou <PHONE>"),
    ("Tel. +49 (0)30 1234-5678, 030 12345678, 030/1234567", "Tel. <PHONE>, <PHONE>, <PHONE>"),
    ("Handy (0171) 123-4567, Büro +49-30-12345678.", "Handy <PHONE>, Büro <PHONE>."),
    ("Tokyo +81 3-1234-5678, Mumbai +91 98765 43210, E.164 +442079460958", "Tokyo <PHONE>, Mumbai <PHONE>, E.164 <PHONE>"),
    ("(reach me on +1 555 555 0199)", "(reach me on <PHONE>)"),
    # US social security numbers
    ("SSN: 123-45-6789.", "SSN: <SSN>."),
    ("The wallet card showed 078-05-1120", "The wallet card showed <SSN>"),
    ("ssn=665-12-3456;", "ssn=<SSN>;"),
    # credit cards: Visa, Mastercard (2-series too), Amex, Discover, JCB, Diners, Visa-13
    ("Visa 4111 1111 1111 1111 exp 12/27", "Visa <CREDIT_CARD> exp 12/27"),
    ("card 5555-5555-5555-4444 and 2223003122003222", "card <CREDIT_CARD> and <CREDIT_CARD>"),
    ("Amex 3782 822463 10005 or 371449635398431", "Amex <CREDIT_CARD> or <CREDIT_CARD>"),
    ("Discover 6011111111111117, JCB 3530 1113 3330 0000", "Discover <CREDIT_CARD>, JCB <CREDIT_CARD>"),
    ("Diners 3056 930902 5904, old Visa 4222222222222", "Diners <CREDIT_CARD>, old Visa <CREDIT_CARD>"),
    # IP addresses (public only by default)
    ("Failed password from 93.184.216.34 port 22", "Failed password from <IP_ADDRESS> port 22"),
    ("GET / HTTP/1.1 - client 81.2.69.160:51234", "GET / HTTP/1.1 - client <IP_ADDRESS>:51234"),
    ("mirrors.kernel.org: 139.178.88.99.", "mirrors.kernel.org: <IP_ADDRESS>."),
    ("v6 peer 2a00:1450:4001:81c::200e and [2606:4700:4700::1111]:443", "v6 peer <IP_ADDRESS> and [<IP_ADDRESS>]:443"),
    ("host 2001:200:0:8002:203:47ff:fea5:3085 (kame)", "host <IP_ADDRESS> (kame)"),
]


@pytest.mark.parametrize("text,expected", FOUND)
def test_redacts_every_type_in_realistic_text(text, expected):
    assert redact(text) == expected


# Things that look like personal data and are not: each must come out unchanged.
LOOK_ALIKES = [
    # version numbers, also four-part ones that are valid addresses
    "Upgrade from 1.2.3 to version 2.10.4.1 (see 2.10.4.2 too).",
    "Standards-Version: 3.9.8.0; libfoo (1:0.9.0.2-4); python-3.11.2.1; 1.2.3.4+dfsg; 1.2.3.4.5",
    "XFree86 4.3.99.16, zlib >= 1.2.2.3, patch V8 to version 11.8.172.15, section 8.2.4.44",
    "OID 1.3.6.1.4.1.311; reverse 1.0.0.127.in-addr.arpa is for a loopback address",
    # dates, times, prices, maths
    "Released 2024-03-15, i.e. 15/03/2024 or 03.15.2024, at 10:30:45 (01.02.2024 12:30 CET).",
    "Price $1,299.99 or 1.299,99 EUR; 3 + 4 = 7; 2^16 = 65536; sizes 128 256 512 1024 2048",
    "Mon, 15 Mar 2024 10:30:00 +0100 and @@ -12,7 +12,8 @@",
    "The range is (-2147483648, +2147483647), clamped to (-32768000, +32768000).",
    "quantize(Decimal('+35236450.6'))",
    # ISBNs, ZIP codes, order numbers, numbers failing Luhn or without a card prefix
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2, Boston, MA 02110-1301 USA",
    "Card 4111 1111 1111 1112 fails Luhn; order 1234567812345678; ticket 9999-8888-7777-6666",
    "Invoice 4111-1111 1111-1111 mixes separators; 4111 1111 1111 1111 1111 1111 is too long",
    # SSN-shaped numbers in ranges never issued
    "000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
    # hashes, ids, hex dumps, /proc tables
    "commit 4f1d2c3b4a5968778695a4b3c2d1e0f9, uuid 123e4567-e89b-12d3-a456-426614174000",
    "hexdump 00 01 02 03 04 05 06 07 08 09; sl 1: 00000000:0801 00000000:0000 0A",
    "001fe000-001ff000 r--p 00019000 08:06 1083555    /lib/libgcc_s.so.1",
    # code and e-mail-like strings that are not addresses
    "@property\ndef weight(self): return x@self.weight.T  # @app.route('/')",
    "see https://medium.com/@someone/post-1 and npm i @babel/core",
    "'sd_in@devanagari.utf8', zip -i@include.lst, systemctl start user@1000.service, ca@valencia.po",
    # addresses that name nobody: documentation and private ranges, RFC 2606 domains
    "ping 192.168.1.1, 10.0.0.1, 127.0.0.1, ::1, fe80::1, 192.0.2.1, 2001:db8::1, 224.0.0.1",
    "a[::2], std::vector, dead::beef, 12:34:56, MAC 00:1a:2b:3c:4d:5e, f9:2a:c2:77:29:f9:5c:00",
    "user@example.com, root@mail.example.org",
]


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_kept(text):
    assert redact(text) == text


def test_luhn_and_issuer_prefixes():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert card_issuer("4111111111111111") == "visa"
    assert card_issuer("2223003122003222") == "mastercard"
    assert card_issuer("371449635398431") == "amex"
    assert card_issuer("6011111111111117") == "discover"
    assert card_issuer("3530111333300000") == "jcb"
    assert card_issuer("30569309025904") == "diners"
    # Luhn-valid, but no issuer uses the prefix (or not at that length)
    assert luhn_valid("1234567812345670") and card_issuer("1234567812345670") is None
    assert luhn_valid("378282246310005") and card_issuer("3782822463100050") is None


def test_per_type_switches_both_sides():
    text = "Mail jane@gmail.com, call 020 7946 0958, SSN 123-45-6789, card 4111111111111111, ip 93.184.216.34"
    everything = "Mail <EMAIL>, call <PHONE>, SSN <SSN>, card <CREDIT_CARD>, ip <IP_ADDRESS>"
    assert redact(text) == everything
    assert redact(text, types=["email"]) == (
        "Mail <EMAIL>, call 020 7946 0958, SSN 123-45-6789, card 4111111111111111, ip 93.184.216.34"
    )
    assert redact(text, types=["phone", "ssn", "credit_card", "ip_address"]) == everything.replace(
        "<EMAIL>", "jane@gmail.com"
    )
    assert redact(text, types=[]) == text
    with pytest.raises(ValidationError):
        PIIRedactor(types=["passport"])


def test_placeholders_override_merges_with_defaults():
    text = "jane@gmail.com / 93.184.216.34"
    assert redact(text, placeholders={"email": "[mail]"}) == "[mail] / <IP_ADDRESS>"
    with pytest.raises(ValidationError):
        PIIRedactor(placeholders={"fax": "<FAX>"})


def test_allow_lists_both_sides():
    assert redact("ask admin@example.com") == "ask admin@example.com"
    assert redact("ask admin@example.com", email_allow_domains=[]) == "ask <EMAIL>"
    assert redact("ask ada@corp.ACME.io", email_allow_domains=["acme.io"]) == "ask ada@corp.ACME.io"
    private = "gateway 192.168.1.1, dns 10.0.0.53, lo ::1, doc 192.0.2.7"
    assert redact(private) == private
    assert redact(private, keep_non_public_ips=False) == (
        "gateway <IP_ADDRESS>, dns <IP_ADDRESS>, lo ::1, doc <IP_ADDRESS>"  # ::1 has too few groups to be taken
    )


def test_counts_and_redacted_document():
    stats = BlockStats("pii")
    doc = Document("d1", "From jane@gmail.com and bob@gmail.com, call 020 7946 0958.", "web", {"k": 1})
    out = PIIRedactor().apply(doc, stats)
    assert out is not None and out.id == "d1" and out.source == "web" and out.meta == {"k": 1}
    assert out.text == "From <EMAIL> and <EMAIL>, call <PHONE>."
    assert doc.text.startswith("From jane@")  # the input document is not changed in place
    assert stats.counters == {"pii.email": 2, "pii.phone": 1, "pii.documents": 1}
    clean = Document("d2", "Nothing personal here, version 1.2.3.4.", "web")
    assert PIIRedactor().apply(clean, stats) is clean
    assert stats.counters["pii.documents"] == 1


def test_drop_mode_removes_with_the_type_as_reason_and_keeps_no_pii_in_samples():
    stats = BlockStats("pii")
    block = PIIRedactor(mode="drop")
    doc = Document("d1", "Call 020 7946 0958 or mail jane@gmail.com", "web")
    assert block.apply(doc, stats) is None
    assert dict(stats.removed) == {"pii.email": 1}
    sample = stats.samples["pii.email"][0]
    assert sample["excerpt"] == "Call <PHONE> or mail <EMAIL>" and sample["detail"] == "email=1, phone=1"
    assert stats.counters == {"pii.email": 1, "pii.phone": 1, "pii.documents": 1}
    kept = Document("d2", "no personal data", "code")
    assert block.apply(kept, stats) is kept
    assert PIIRedactor.drop_on_error is True


def test_matches_datatrove_where_the_rules_agree():
    formatters = pytest.importorskip("datatrove.pipeline.formatters")
    peer = formatters.PIIFormatter(email_replacement="<EMAIL>", ip_replacement="<IP_ADDRESS>")
    ours = PIIRedactor(types=["email", "ip_address"], email_allow_domains=[])
    agree = [
        "Contact jane.doe@mail-server.co.uk or J.Smith+news@gmail.com today.",
        "Failed password for root from 93.184.216.34 port 22; 81.2.69.160 retried",
        "private 192.168.1.1 and 10.0.0.1 stay, the mirror 139.178.88.99 goes",
        "-- Michael Vogt <mvo@debian.org>  Mon, 01 Jan 2024 10:00:00 +0100",
    ]
    for text in agree:
        assert ours.redact(text, ours.find(text)) == peer.format(text)
    # Where they differ, by design: version numbers and unknown top-level domains.
    text = "Standards-Version: 3.6.2.2; 'sd_in@devanagari.utf8'"
    assert peer.format(text) == "Standards-Version: <IP_ADDRESS>; '<EMAIL>'"
    assert ours.redact(text, ours.find(text)) == text


def test_person_names_through_a_spacy_pipeline(tmp_path):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [
            {"label": "PERSON", "pattern": [{"LOWER": "ada"}, {"LOWER": "lovelace"}]},
            {"label": "PER", "pattern": "Grace Hopper"},
            {"label": "ORG", "pattern": "Debian"},
        ]
    )
    nlp.to_disk(tmp_path / "ner")
    block = PIIRedactor(types=["person", "email"], ner_model=str(tmp_path / "ner"))
    text = "Ada Lovelace (ada@gmail.com) wrote to Debian.\n\nThen Grace Hopper replied."
    assert block.redact(text, block.find(text)) == "<PERSON> (<EMAIL>) wrote to Debian.\n\nThen <PERSON> replied."
    # the loaded pipeline is not part of what is sent to a worker process
    assert block._nlp is not None
    copy = pickle.loads(pickle.dumps(block))
    assert copy._nlp is None and copy.redact(text, copy.find(text)) == block.redact(text, block.find(text))


def test_person_type_without_a_model_is_a_config_error(tmp_path):
    pytest.importorskip("spacy")
    with pytest.raises(ValidationError, match="neither an installed spaCy package nor a folder"):
        PIIRedactor(types=["person"], ner_model="no_such_pipeline_xyz")
    with pytest.raises(ValidationError, match="neither an installed spaCy package nor a folder"):
        PIIRedactor(types=["person"], ner_model=str(tmp_path / "missing" / "ner"))
    PIIRedactor(types=["person"], ner_model="no_such_pipeline_xyz", enabled=False)  # off: not checked


def test_person_type_without_spacy_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))
    with pytest.raises(ValidationError, match="needs spaCy"):
        PIIRedactor(types=["person"])
    assert "person" not in PIIRedactor().types  # the default regex types need nothing


def test_block_pickles_and_works_after():
    block = pickle.loads(pickle.dumps(PIIRedactor(mode="drop", types=["ssn"])))
    stats = BlockStats("pii")
    assert block.apply(Document("d", "SSN 123-45-6789", "legal"), stats) is None
    assert dict(stats.removed) == {"pii.ssn": 1}


def test_in_the_pipeline_redacted_shards_and_counters(tmp_path):
    docs = [
        Document("a", "-- Jane Roe <jane@gmail.com>  Mon, 01 Jan 2024", "web"),
        Document("b", "__author__ = 'Ann <ann@python.org>'  # from 93.184.216.34", "code"),
        Document("c", "Nothing here but version 2.10.4.1 and ISBN 978-3-16-148410-0.", "manuals"),
    ]
    stats, kept = run_pipeline(tmp_path, [PIIRedactor()], docs, "out")
    assert {i: d.text for i, d in kept.items()} == {
        "a": "-- Jane Roe <<EMAIL>>  Mon, 01 Jan 2024",
        "b": "__author__ = 'Ann <<EMAIL>>'  # from <IP_ADDRESS>",
        "c": docs[2].text,
    }
    (entry,) = stats["blocks"]
    assert entry["counters"] == {"pii.documents": 2, "pii.email": 2, "pii.ip_address": 1}
    assert entry["removed"] == {} and entry["docs_out"] == 3
