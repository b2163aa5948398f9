"""Issue 11 against a real `ocrd run` (tiny model): hooks that write files, /metrics fetched over
HTTP and parsed with prometheus_client's own parser, pause across a restart, show --text."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import samples
from helpers import wait_for

# Writes the job's OCRD_* environment to <dir>/<job id>.json, then exits 7: a failing hook.
HOOK = ("import json, os, sys; env = {k: v for k, v in os.environ.items() if k.startswith('OCRD_')}; "
        "open(os.path.join(sys.argv[1], env['OCRD_JOB_ID'] + '.json'), 'w').write(json.dumps(env)); "
        "print('hook says hi'); sys.exit(7)")


def _metrics(url: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from a real scrape."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_hooks_and_metrics(make_daemon, tmp_path: Path) -> None:
    ran = tmp_path / "hooks"
    ran.mkdir()
    d = make_daemon(tables={"hooks": {"on_done": [sys.executable, "-c", HOOK, str(ran)],
                                      "on_failed": [sys.executable, "-c", HOOK, str(ran)],
                                      "timeout_s": 30},
                            "metrics": {"listen": "127.0.0.1:0"}})
    d.start()
    samples.write_image(d.inbox / "sub" / "photo.png", "PNG")
    samples.write_corrupt_pdf(d.inbox / "broken.pdf")
    states = d.wait_settled(2)
    assert states == {"photo.png": "done", "broken.pdf": "failed"}
    envs = wait_for(lambda: len(files := sorted(ran.glob("*.json"))) == 2
                    and [json.loads(f.read_text()) for f in files], 60, 0.2, "both hooks")
    by_state = {e["OCRD_STATE"]: e for e in envs}
    done, failed = by_state["done"], by_state["failed"]
    assert done["OCRD_SOURCE"] == str(d.inbox / "sub" / "photo.png")
    assert done["OCRD_OUTPUT"] == str(d.outbox / "sub" / "photo.md") and done["OCRD_ERROR"] == ""
    assert done["OCRD_OUTPUTS"] == done["OCRD_OUTPUT"]     # one line per format: md only here
    assert Path(done["OCRD_OUTPUT"]).exists()
    assert failed["OCRD_SOURCE"] == str(d.inbox / "broken.pdf") and failed["OCRD_ERROR"]
    assert failed["OCRD_OUTPUT"] == ""
    # the hook exited 7: logged, and its job stays done
    assert d.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1
    def logged() -> list[dict]:   # a hook is logged once it has exited (after it wrote its file)
        log = (d.state / "logs" / "ocrd.log").read_text()
        return [json.loads(line) for line in log.splitlines() if '"hook_failed"' in line]

    hook_lines = wait_for(lambda: len(lines := logged()) == 2 and lines, 30, 0.1, "both hooks logged")
    assert {h["exit_code"] for h in hook_lines} == {7}
    assert all(h["output"] == "hook says hi" for h in hook_lines)

    status = d.status()
    url = status["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    m = wait_for(lambda: (s := _metrics(url))["ocrd_workers"][()] == 1 and s, 60, 0.5, "a live worker")
    assert m["ocrd_jobs"][(("state", "done"),)] == 1 and m["ocrd_jobs"][(("state", "failed"),)] == 1
    assert m["ocrd_pages_done_total"][()] == 1 and m["ocrd_pages"][(("state", "done"),)] == 1
    assert m["ocrd_tokens_generated_total"][()] > 0
    assert m["ocrd_page_seconds_count"][()] == 1 and m["ocrd_page_seconds_bucket"][(("le", "+Inf"),)] == 1
    assert m["ocrd_page_seconds_sum"][()] > 0
    assert m["ocrd_queue_depth"][()] == 0 and m["ocrd_pages_in_flight"][()] == 0
    assert m["ocrd_model_status"][(("status", "ok"),)] == 1 and m["ocrd_paused"][()] == 0
    [(worker_labels, memory)] = m["ocrd_device_memory_active_bytes"].items()
    assert memory >= 0 and m["ocrd_device_memory_in_use_bytes"][()] == memory   # 0 for CPU engines
    assert 0 <= m["ocrd_heartbeat_age_seconds"][worker_labels] < 60

    assert d.stop() == 0
    assert json.loads(d.cli("status", "--json", check=False).stdout)["metrics_url"] is None


def test_pause_survives_a_restart_and_show_text_is_the_outbox_file(make_daemon) -> None:
    d = make_daemon()
    d.start()
    wait_for(lambda: d.status()["model_status"] == "ok", 120, 0.5, "the model to load")
    assert d.cli("pause").stdout.startswith("paused:")
    assert d.stop() == 0
    d.start()                                                        # the pause is in the ledger
    wait_for(lambda: d.status()["model_status"] == "ok", 120, 0.5, "the model to load again")
    samples.write_pdf(d.inbox / "letter.pdf", 2)
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM pages WHERE state = 'queued'") == 2, 60, 0.2,
             "the file to be ingested and queued")
    beats = d.scalar("SELECT COUNT(*) FROM heartbeats")
    # two more heartbeats of an idle worker (5 s apart) and still nothing claimed
    wait_for(lambda: d.scalar("SELECT COUNT(*) FROM heartbeats") >= beats + 2, 60, 0.5, "heartbeats")
    assert d.query("SELECT state, COUNT(*) FROM pages GROUP BY state") == [("queued", 2)]
    running = d.cli("status", "--json")                              # exit 0: running
    assert json.loads(running.stdout)["paused"] is True
    assert "PAUSED" in d.cli("status").stdout

    assert d.cli("resume").stdout.startswith("resumed:")
    assert d.wait_settled(1) == {"letter.pdf": "done"}
    (job_id, output), = d.query("SELECT id, output_path FROM jobs")
    shown = d.cli("show", str(job_id), "--text")
    assert shown.stdout.encode() == Path(output).read_bytes() == (d.outbox / "letter.md").read_bytes()
    assert "<!-- page 2 of 2 -->" in shown.stdout
    assert d.stop() == 0
