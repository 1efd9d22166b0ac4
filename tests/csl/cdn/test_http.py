"""csl.cdn.http: what the remote providers share (Retry-After, masking provider text)."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest

from csl.cdn.http import MAX_RETRY_AFTER_S, one_line, retry_after_s
from csl.config import Secret


@pytest.mark.parametrize(("header", "seconds"), [
    ("30", 30.0), ("0", 0.0), ("-4", 0.0), ("1e9", MAX_RETRY_AFTER_S), ("inf", None), ("soon", None), (None, None),
])
def test_retry_after_seconds_are_read_bounded(header, seconds):
    headers = {"Retry-After": header} if header is not None else {}
    assert retry_after_s(httpx.Response(429, headers=headers)) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then():
    response = httpx.Response(503, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)})
    assert 115 <= retry_after_s(response) <= 121


def test_provider_text_is_masked_in_every_encoding_and_kept_to_one_short_line():
    secret = Secret("s3cr3t/with+symbols=")
    text = ("echo: s3cr3t/with+symbols= form: client_secret=s3cr3t%2Fwith%2Bsymbols%3D "
            "plus: s3cr3t%2Fwith%2Bsymbols%3D\n next line")
    masked = one_line(text, [secret])
    assert "s3cr3t" not in masked and masked.count("***") == 3 and "\n" not in masked
    assert len(one_line("x" * 500)) == 200
