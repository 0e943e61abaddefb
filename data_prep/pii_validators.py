"""Checks a PII candidate must pass, named by `validator:` in a country profile.

A regular expression finds digit strings; these checks tell an identity number from a
price, a date or an ISBN. Country facts (valid province codes, number lengths) arrive as
arguments from the profile, so the functions themselves hold no country's data.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

_THOUSANDS = re.compile(r"^\d{1,3}(?:[.,]\d{3})+$")


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _day_month_ok(day: int, month: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= 31


def national_id_with_birth_date(candidate: str, *, length: int, region_prefixes: list[str],
                                date_offset: int, female_day_offset: int = 0,
                                date_order: str = "DMY", serial_digits: int = 4) -> bool:
    """An ID that holds a region code and a birth date, e.g. Indonesia's NIK
    (PPRRDD DDMMYY SSSS, day + 40 for women) or Malaysia's MyKad (YYMMDD-PB-###G).

    `date_offset` is where the 6-digit date starts; `region_prefixes` are the valid leading
    codes (an empty list accepts any)."""
    d = digits(candidate)
    if len(d) != length:
        return False
    date = d[date_offset:date_offset + 6]
    if date_order == "DMY":
        day, month = int(date[:2]), int(date[2:4])
    else:  # YMD
        month, day = int(date[2:4]), int(date[4:6])
    if female_day_offset and day > female_day_offset:
        day -= female_day_offset
    if not _day_month_ok(day, month):
        return False
    if serial_digits and int(d[-serial_digits:]) == 0:
        return False
    return any(d.startswith(p) for p in region_prefixes) if region_prefixes else True


def national_id_with_code(candidate: str, *, offset: int, codes: list[str], **id_args: Any) -> bool:
    """`national_id_with_birth_date`, plus a code at `offset` that must be one of `codes`
    (Malaysia's place-of-birth code sits after the date)."""
    d = digits(candidate)
    width = len(codes[0]) if codes else 0
    return national_id_with_birth_date(candidate, region_prefixes=[], **id_args) and \
        (not codes or d[offset:offset + width] in codes)


def phone_number(candidate: str, *, country_code: str, trunk_prefix: str = "0",
                 mobile_prefixes: list[str], mobile_lengths: list[int],
                 landline_lengths: list[int], landline_prefixes: list[str] = ()) -> bool:
    """A national phone number: +CC / 00CC / CC is rewritten to the trunk prefix, then mobile
    numbers are checked by prefix and length, landlines by length. Thousands-grouped
    numbers (62.500.000) are amounts, not phones."""
    stripped = candidate.strip()
    if _THOUSANDS.match(stripped):
        return False
    d = digits(stripped)
    if stripped.startswith("00"):
        d = d[2:]
    if stripped.startswith(("+", "00")) or not d.startswith(trunk_prefix):
        if not d.startswith(country_code):
            return False
        d = trunk_prefix + d[len(country_code):]
        if d.startswith(trunk_prefix * 2):  # "+62 (0)21 ...": trunk prefix kept after the code
            d = d[len(trunk_prefix):]
    if any(d.startswith(p) for p in mobile_prefixes):
        return len(d) in mobile_lengths
    if landline_prefixes and not any(d.startswith(p) for p in landline_prefixes):
        return False
    return len(d) in landline_lengths


def luhn(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


# Issuer prefixes (IIN ranges) and lengths of the card networks in use, from the networks'
# published ranges: Visa, Mastercard, Amex, Discover, JCB, UnionPay, Diners.
_CARD_NETWORKS = [
    (lambda d: d.startswith("4"), (13, 16, 19)),
    (lambda d: 51 <= int(d[:2]) <= 55 or 2221 <= int(d[:4]) <= 2720, (16,)),
    (lambda d: d[:2] in ("34", "37"), (15,)),
    (lambda d: d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649, (16, 17, 18, 19)),
    (lambda d: 3528 <= int(d[:4]) <= 3589, (16, 17, 18, 19)),
    (lambda d: d.startswith("62"), (16, 17, 18, 19)),
    (lambda d: d[:2] in ("36", "38", "39") or 300 <= int(d[:3]) <= 305, (14, 16)),
]


def payment_card(candidate: str) -> bool:
    """A card number: a known network's prefix and length, and a valid Luhn check digit."""
    d = digits(candidate)
    if not 13 <= len(d) <= 19:
        return False
    return any(prefix(d) and len(d) in lengths for prefix, lengths in _CARD_NETWORKS) and luhn(d)


def luhn_number(candidate: str, *, lengths: list[int], prefixes: list[str] = ()) -> bool:
    """A number whose last digit is a Luhn check over all its digits, of one of `lengths`
    and starting with one of `prefixes` (an empty list accepts any): Saudi Arabia's national
    ID and Iqama (10 digits, 1 or 2 first), the UAE's Emirates ID (15, 784 and a birth year)."""
    d = digits(candidate)
    return len(d) in lengths and (not prefixes or d.startswith(tuple(prefixes))) and luhn(d)


def mod11_weighted(candidate: str, *, length: int, prefixes: list[str] = ()) -> bool:
    """A number whose last digit checks the others weighted length, length - 1, ..., 2 from
    the left: check = (11 - sum mod 11) mod 10. Thailand's 13-digit ID (weights 13..2) and
    its tax numbers use it. `prefixes`, if any, are the valid leading digits."""
    d = digits(candidate)
    if len(d) != length or (prefixes and not d.startswith(tuple(prefixes))):
        return False
    total = sum(int(c) * (length - i) for i, c in enumerate(d[:-1]))
    return (11 - total % 11) % 10 == int(d[-1])


def iban(candidate: str, *, country: str, length: int) -> bool:
    """An IBAN of `country` (its ISO 3166 code, e.g. SA) and total `length`, spaces allowed:
    ISO 13616 moves the first four characters to the end, letters become 10..35, and the
    number mod 97 must be 1."""
    code = "".join(candidate.split()).upper()
    if len(code) != length or not code.startswith(country) or not code.isascii() or not code.isalnum():
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ip_address(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        return False


VALIDATORS: dict[str, Callable[..., bool]] = {
    "national_id_with_birth_date": national_id_with_birth_date,
    "national_id_with_code": national_id_with_code,
    "phone_number": phone_number,
    "payment_card": payment_card,
    "luhn": luhn_number,
    "mod11_weighted": mod11_weighted,
    "iban": iban,
    "ip_address": ip_address,
}
