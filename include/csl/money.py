"""Money in integer minor units, by each currency's ISO 4217 exponent.

The platform stores amounts as float major units (9.99 dollars, 1000 yen, 12.345 dinars). One
rule turns them into minor units, here and in SQL (``csl_ops.minor_units(amount, exponent)``
with the exponent from ``csl_ops.currencies``, tested to agree with ``CURRENCY_EXPONENTS``):
the float's decimal at 15 significant digits (what PostgreSQL's float8 → numeric cast does:
digits past the 15th are float noise), times 10^exponent. An amount with a real part below the
minor unit (10.005 dollars, 1000.5 yen) is refused, never rounded; a currency not in the table
is refused, never guessed.
"""

from __future__ import annotations

from decimal import Decimal

from csl.errors import BadInput

__all__ = ["CURRENCY_EXPONENTS", "SubUnitAmount", "UnsupportedCurrency", "exponent", "from_minor", "to_minor"]


class UnsupportedCurrency(BadInput, ValueError):
    """A currency code that is not an active ISO 4217 currency with a minor unit."""


class SubUnitAmount(BadInput, ValueError):
    """An amount with a real part below the currency's minor unit."""


# Active ISO 4217 codes (amendment of 2025, with XCG and ZWG; without the withdrawn HRK, ZWL, SLL,
# CUC, ANG, BGN) and their minor-unit exponents; funds codes included, metals and XDR/XSU/XUA
# (no minor unit) left out. The same rows are in csl_ops.currencies (0011_settlement_trust.sql).
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        ["aed", "afn", "all", "amd", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt", "bmd", "bnd", "bob", "bov", "brl", "bsd", "btn", "bwp", "byn", "bzd", "cad", "cdf", "che", "chf", "chw", "cny", "cop", "cou", "crc", "cup", "cve", "czk", "dkk", "dop", "dzd", "egp", "ern", "etb", "eur", "fjd", "fkp", "gbp", "gel", "ghs", "gip", "gmd", "gtq", "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils", "inr", "irr", "jmd", "kes", "kgs", "khr", "kpw", "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "mad", "mdl", "mga", "mkd", "mmk", "mnt", "mop", "mru", "mur", "mvr", "mwk", "mxn", "mxv", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr", "nzd", "pab", "pen", "pgk", "php", "pkr", "pln", "qar", "ron", "rsd", "rub", "sar", "sbd", "scr", "sdg", "sek", "sgd", "shp", "sle", "sos", "srd", "ssp", "stn", "svc", "syp", "szl", "thb", "tjs", "tmt", "top", "try", "ttd", "twd", "tzs", "uah", "usd", "usn", "uyu", "uzs", "ved", "ves", "wst", "xcd", "xcg", "yer", "zar", "zmw", "zwg"], 2),
    **dict.fromkeys(["bif", "clp", "djf", "gnf", "isk", "jpy", "kmf", "krw", "pyg", "rwf", "ugx", "uyi", "vnd", "vuv", "xaf", "xof", "xpf"], 0),
    **dict.fromkeys(["bhd", "iqd", "jod", "kwd", "lyd", "omr", "tnd"], 3),
    **dict.fromkeys(["clf", "uyw"], 4),
}


def exponent(currency: str) -> int:
    """The ISO 4217 exponent of ``currency`` (any case); ``UnsupportedCurrency`` if unknown."""
    code = currency.strip().lower() if isinstance(currency, str) else ""
    if code not in CURRENCY_EXPONENTS:
        raise UnsupportedCurrency(f"currency {currency!r} is not a supported ISO 4217 currency")
    return CURRENCY_EXPONENTS[code]


def to_minor(amount: float | Decimal | str, currency: str) -> int:
    """Exact minor units of ``amount`` in ``currency``.

    A float is read as its decimal at 15 significant digits, exactly like ``csl_ops.minor_units``
    (PostgreSQL's float8 → numeric): ``0.1 + 0.2`` dollars is 30 cents, ``10.005`` keeps its half
    cent and is refused (``SubUnitAmount``). Decimals and strings are taken as written.
    """
    scale = 10 ** exponent(currency)
    exact = Decimal(format(amount, ".15g")) if isinstance(amount, float) else Decimal(str(amount))
    minor = exact * scale
    if not minor.is_finite() or minor != minor.to_integral_value():
        raise SubUnitAmount(f"{amount!r} {currency.upper()} is not a whole number of minor units "
                            f"(1/{scale} of a unit)")
    return int(minor)


def from_minor(minor: int, currency: str) -> Decimal:
    """Major units of an integer amount of minor units (1050 usd → 10.50, 1000 jpy → 1000)."""
    return Decimal(int(minor)).scaleb(-exponent(currency))
