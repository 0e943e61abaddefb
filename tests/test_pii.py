"""PII: every Indonesian type found and replaced, numbers that are not PII kept, validators exact."""

from __future__ import annotations

import csv

import pytest

from countrytune.errors import UserError
from countrytune.profiles import PiiRule, load_profile
from data_prep.pii import PiiRedactor
from data_prep.pii_validators import luhn, national_id_with_birth_date, payment_card, phone_number

INDONESIA = PiiRedactor(load_profile("id").pii)
MALAYSIA = PiiRedactor(load_profile("my").pii)


@pytest.mark.parametrize("text, expected", [
    ("NIK saya 3174051208900003 ya", "NIK saya <NIK> ya"),
    ("NIK perempuan 3174055208900003.", "NIK perempuan <NIK>."),  # day 12 + 40
    ("NIK: 3174 0512 0890 0003", "NIK: <NIK>"),
    ("nik 317405.120890.0003 terdaftar", "nik <NIK> terdaftar"),
    ("NPWP 01.234.567.8-901.234", "NPWP <NPWP>"),
    ("NPWP badan 001.234.567.8-901.234", "NPWP badan <NPWP>"),
    ("npwp: 012345678901234", "npwp: <NPWP>"),
    ("NPWP baru 0012345678901234 aktif", "NPWP baru <NPWP> aktif"),
    ("hubungi 0812-3456-7890", "hubungi <PHONE>"),
    ("hubungi 081234567890 segera", "hubungi <PHONE> segera"),
    ("WA +62 812 3456 7890", "WA <PHONE>"),
    ("wa 62812345678", "wa <PHONE>"),
    ("telp (021) 555-1234", "telp <PHONE>"),
    ("telp 0274 512345", "telp <PHONE>"),
    ("kantor +62 (0)21 555 1234", "kantor <PHONE>"),
    ("email budi.santoso@mail.co.id ya", "email <EMAIL> ya"),
    ("server 192.168.10.5", "server <IP>"),
    ("ipv6 2001:db8::1 aktif", "ipv6 <IP> aktif"),
    ("kartu 4111 1111 1111 1111", "kartu <CARD>"),
    ("kartu 5500-0000-0000-0004 ditolak", "kartu <CARD> ditolak"),
    ("Kirim ke a@b.co atau 0812 3456 7890.", "Kirim ke <EMAIL> atau <PHONE>."),
])
def test_indonesian_pii_is_replaced(text, expected):
    assert INDONESIA.redact(text)[0] == expected


@pytest.mark.parametrize("text", [
    "Harga Rp 150.000 per kilo", "Rp 62.500.000 untuk 3 bulan", "Rp0812345678", "tahun 2023",
    "lahir 17-08-1945", "tanggal 08-12-2023", "tanggal 02/12/2023", "kode pos 40115",
    "ISBN 978-602-03-1234-5", "versi 3.10.2", "versi 1.2.3.4", "1.500 orang", "jam 08.30",
    "pukul 10:30:45", "nomor 1234567890123456", "62215", "0,5 kg", "skor 3-1",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14", "rekening 1234567890", "NIK 3174051213900003",
])
def test_numbers_that_are_not_pii_survive(text):
    assert INDONESIA.redact(text)[0] == text


def test_counts_by_type():
    text = "NIK 3174051208900003, HP 0812-3456-7890 dan 0857 1234 5678, surel x@y.id"
    redacted, found = INDONESIA.redact(text)
    assert dict(found) == {"NIK": 1, "PHONE": 2, "EMAIL": 1}
    assert redacted == "NIK <NIK>, HP <PHONE> dan <PHONE>, surel <EMAIL>"


def test_nik_structure():
    kw = dict(length=16, date_offset=6, female_day_offset=40, region_prefixes=["31", "32"])
    assert national_id_with_birth_date("3174051208900003", **kw)
    assert national_id_with_birth_date("3174055208900003", **kw)       # woman: day 52 = 12
    assert not national_id_with_birth_date("3174053208900003", **kw)   # day 32
    assert not national_id_with_birth_date("3174051213900003", **kw)   # month 13
    assert not national_id_with_birth_date("9974051208900003", **kw)   # no province 99
    assert not national_id_with_birth_date("3174051208900000", **kw)   # serial 0000


def test_card_and_luhn():
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert payment_card("378282246310005")          # Amex, 15 digits
    assert not payment_card("9781234567897")        # an ISBN-13: no card network starts with 9
    assert not payment_card("4111 1111 1111 1112")


def test_phone_normalises_country_code():
    kw = dict(country_code="62", mobile_prefixes=["08"], mobile_lengths=[10, 11, 12, 13],
              landline_lengths=[9, 10, 11, 12])
    assert phone_number("+62 812-3456-7890", **kw) and phone_number("0062 812 3456 7890", **kw)
    assert not phone_number("62.500.000", **kw)
    assert not phone_number("08-12-2023", **kw)


def test_second_country_needs_no_code():
    assert MALAYSIA.redact("No. IC 850712-14-5523, tel 012-345 6789")[0] == "No. IC <MYKAD>, tel <PHONE>"
    assert MALAYSIA.redact("tarikh 12-07-1985, harga RM 1.250") == ("tarikh 12-07-1985, harga RM 1.250", {})


def test_bad_rule_config_is_a_clear_error():
    with pytest.raises(UserError, match="unknown validator 'nik_check'"):
        PiiRedactor([PiiRule(type="NIK", pattern=r"\d{16}", validator="nik_check")])
    with pytest.raises(UserError, match="validator_args do not fit"):
        PiiRedactor([PiiRule(type="CARD", pattern=r"\d+", validator="payment_card", validator_args={"x": 1})])


def test_real_text_has_no_false_positives(shared_data):
    """Every match in NusaX and NusaParagraph is real contact data quoted in the text."""
    found = []
    files = sorted((shared_data / "nusa-writes").glob("*.csv")) + sorted((shared_data / "nusax").rglob("*.csv"))
    for path in files:
        for row in csv.DictReader(open(path, encoding="utf-8")):
            redacted, counts = INDONESIA.redact(row["text"])
            if counts:
                found.append((path.name, dict(counts), redacted))
    total = {k: sum(c.get(k, 0) for _, c, _ in found) for k in ("EMAIL", "PHONE")}
    assert total == {"EMAIL": 2, "PHONE": 2} and len(found) == 2, found
