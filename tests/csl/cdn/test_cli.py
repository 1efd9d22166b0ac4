"""``python -m csl cdn purge|url|headers`` as a person runs it: against the test stack's database and
its real Varnish edge; exit 0 done, 1 a batch failed, 2 bad input (one line, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from csl.cdn import CachePolicy, Cdn
from csl.storage import StorageProvider

REPO = Path(__file__).resolve().parents[3]


def csl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO / "include"), "CSL_ENV_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "csl", "cdn", *args], capture_output=True, text=True, env=full,
                          timeout=120, check=False)


@pytest.fixture
def served(settings, platform):
    published = StorageProvider(settings.provider("primary")).published()
    key = f"samples/t{uuid.uuid4().hex[:10]}/cli.wav"
    headers = CachePolicy().for_content_type("audio/wav")

    def put(body: bytes) -> None:
        published.put(key, body, content_type="audio/wav", metadata=headers.metadata,
                      cache_control=headers.cache_control)

    put(b"RIFF one")
    with Cdn.from_settings(settings) as cdn:
        yield cdn.url("audio", key), put
    published.delete(key)


def test_purge_by_url_then_a_rerun_of_the_run_sends_nothing_again(stack_env, settings, served):
    url, put = served
    assert httpx.get(url).headers["x-cache"] == "MISS" and httpx.get(url).headers["x-cache"] == "HIT"
    put(b"RIFF two")
    run_key = f"cli-{uuid.uuid4().hex[:8]}"
    done = csl(stack_env, "purge", "--url", url, "--run-key", run_key, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    assert summary["by_target"]["varnish/audio"]["done"] == 1 and summary["failed"] == 0
    answer = httpx.get(url)
    assert (answer.headers["x-cache"], answer.content) == ("MISS", b"RIFF two")
    again = csl(stack_env, "purge", "--url", url, "--run-key", run_key, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["sent"]["by_target"] == {}
    with psycopg.connect(settings.database.primary_url) as conn:
        assert conn.execute("SELECT count(*), max(attempts) FROM csl_ops.cdn_purges WHERE run_key = %s",
                            (run_key,)).fetchone() == (1, 1)


def test_a_dry_run_sends_nothing_and_bad_input_is_one_line_exit_2(stack_env, settings, served):
    url, _put = served
    httpx.get(url)
    dry = csl(stack_env, "purge", "--url", url, "--tag", "sample:1", "--dry-run")
    assert dry.returncode == 0 and "would send url purge to varnish/audio" in dry.stdout
    assert httpx.get(url).headers["x-cache"] == "HIT"
    for args, problem in ((["purge", "--url", "https://elsewhere.example.org/a.mp3"], "outside every CDN zone"),
                          (["purge", "--tag", "two words"], "tag 'two words'"),
                          (["purge", "--url", url, "--zone", "video"], "unknown CDN zone 'video'"),
                          (["purge"], "nothing to purge"),
                          (["url", "audio", "samples/a.mp3", "--bitrate", "100"], "bitrate"),
                          (["url", "images", "../etc/passwd"], "'..'")):
        refused = csl(stack_env, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0], (args, refused.stderr)


def test_url_and_headers_follow_the_zones_and_the_ttl_table(stack_env):
    url = csl(stack_env, "url", "audio", "samples/ab/x y.mp3", "--bitrate", "128", "--format", "mp3")
    assert url.returncode == 0
    assert url.stdout.strip() == f"{stack_env['CDN_BASE_URL']}/audio/samples/ab/x%20y.mp3?bitrate=128&format=mp3"
    headers = csl(stack_env, "headers", "images", "--json")
    assert headers.returncode == 0
    assert json.loads(headers.stdout)["Cache-Control"] == "public, max-age=86400, s-maxage=2592000"
    overridden = csl({**stack_env, "CDN_AUDIO_EDGE_TTL": "3600"}, "headers", "audio")
    assert "Cache-Control: public, max-age=86400, s-maxage=3600" in overridden.stdout
