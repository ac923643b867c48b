"""The console (/console) in headless Chromium against a real uvicorn (auth on) and the shared
worker: enter a key, submit a job from the form, watch it reach `succeeded` over the event
stream, and find an <audio> element with the job's audio; upload a voice on the voices page.
A screenshot lands in the test log folder (its path is printed).

Chromium is Debian's, installed by infra/dev/ensure-chromium.sh when missing (root with apt);
the test skips, saying why, only where none can be installed. Playwright drives it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.fixtures import voice_audio
from tests.fixtures.live_api import live_api
from tests.fixtures.processes import ROOT, Proc
from tests.fixtures.tenants import tenant_with_key


@pytest.fixture(scope="module")
def chromium() -> str:
    script = ROOT / "infra" / "dev" / "ensure-chromium.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"no Chromium could be installed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def api(database: str, redis_client: object, log_dir: Path) -> Iterator[str]:
    with live_api(log_dir, {"VOICEFARM_AUTH_ENABLED": "true"}) as base:
        yield base


def test_console_submits_a_job_and_plays_its_audio(
    chromium: str, api: str, worker: Proc, db: str, log_dir: Path, tmp_path: Path
) -> None:
    key = tenant_with_key(db, "console")
    page_csp = httpx.get(f"{api}/console/").headers["content-security-policy"]
    assert "script-src 'self'" in page_csp and "unsafe-inline" not in page_csp
    problems: list[str] = []
    shot = log_dir / "console.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Script errors and CSP refusals; the 401s of the first load, before the key is
            # entered, are the API doing its job.
            page.on("console", lambda m: problems.append(m.text) if "Refused" in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{api}/console/")
            page.fill("#api-key", key.key)
            page.click("#save-key")
            page.wait_for_selector("#job-engine option[value=tone]", state="attached")
            page.fill("#job-text", "Spoken from the console. A second sentence follows.")
            page.select_option("#job-engine", "tone")
            page.select_option("#job-format", "wav")
            page.click("#submit-job")
            row = page.wait_for_selector("tr[data-job-id]", timeout=10_000)
            assert row is not None
            job_id = row.get_attribute("data-job-id")
            done = f'tr[data-job-id="{job_id}"][data-status="succeeded"]'
            audio = page.wait_for_selector(f'{done} audio[data-loaded="true"]', timeout=60_000)
            assert audio is not None
            assert audio.get_attribute("data-audio-url") == f"{api}/v1/jobs/{job_id}/audio"
            assert (audio.get_attribute("src") or "").startswith("blob:")
            page.screenshot(path=str(shot), full_page=True)
            print(f"console screenshot: {shot}")

            # The tenant filter: another tenant's id hides the row, the job's own shows it.
            row_of_job = f'tr[data-job-id="{job_id}"]'
            assert page.get_attribute(row_of_job, "data-tenant-id") == str(key.tenant_id)
            page.fill("#filter-tenant", "00000000-0000-0000-0000-00000000dead")
            page.wait_for_selector(row_of_job, state="detached", timeout=10_000)
            page.fill("#filter-tenant", str(key.tenant_id))
            page.wait_for_selector(row_of_job, timeout=10_000)
            page.fill("#filter-tenant", "")

            # Voices: upload a recording, see it listed.
            recording = tmp_path / "reference.wav"
            recording.write_bytes(voice_audio.speech())
            page.click("#nav-voices")
            page.fill("#voice-name", "console voice")
            page.fill("#voice-transcript", " ".join(voice_audio.SENTENCES))
            page.set_input_files("#voice-file", str(recording))
            page.click("#submit-voice")
            page.wait_for_selector("#voices tbody tr[data-voice-id]", timeout=10_000)
            page.screenshot(path=str(log_dir / "console-voices.png"), full_page=True)
            print(f"console screenshot: {log_dir / 'console-voices.png'}")
        finally:
            browser.close()
    assert not problems, problems
