"""Continuous batching: the real mlx-vlm BatchGenerator on the tiny model, and the in-flight tuner.

Per-page guards act on one page and never on its batch-mates: a looping page, a page over its
time budget and a page that can't be prepared each leave alone while the others finish.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import samples
from ocrd.daemon.engines.base import SerialSession, open_session
from ocrd.daemon.worker.tuner import InFlightTuner
from ocrd.daemon.config import ModelConfig
from ocrd.daemon.engines.base import Finished
from ocrd.daemon.engines.mlxvlm import MlxSession, MlxVlmEngine, prefill_group
from ocrd.daemon.errors import EngineError, PageTimeout
from engines import CrashingEngine, FakeEngine

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def run(session, pages: dict[str, dict]) -> dict[str, Finished]:
    """Add every page (key -> add() keywords), step until the session is empty."""
    out = {}
    for key, kw in pages.items():
        refused = session.add(key, samples.page_image(len(out) + 1, (900, 1200)), **{"prompt": PROMPT, "mode": "tiny", **kw})
        if refused is not None:
            out[key] = refused
    while len(session):
        out.update((f.key, f) for f in session.step())
    return out


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> MlxVlmEngine:
    e = MlxVlmEngine(ModelConfig(path=str(tiny_model)))
    e.load()
    return e


def test_pages_in_flight_finish_each_with_their_own_counts_and_mode(engine) -> None:
    session = engine.open_session(capacity=4)
    try:
        done = run(session, {"a": {"max_tokens": 7}, "b": {"max_tokens": 3}, "c": {"max_tokens": 5, "mode": "base"},
                             "d": {"max_tokens": 6, "mode": "gundam"}, "e": {"max_tokens": 4}})
    finally:
        session.close()
    results = {k: f.result for k, f in done.items()}
    assert {k: r.generation_tokens for k, r in results.items()} == {"a": 7, "b": 3, "c": 5, "d": 6, "e": 4}
    assert all(r.finish_reason == "length" and r.text for r in results.values())
    # each page was prepared in its own resolution mode
    assert results["a"].prompt_tokens < results["c"].prompt_tokens < results["d"].prompt_tokens
    assert session.generated == 25


def test_a_looping_page_leaves_the_batch_alone(tiny_model) -> None:
    # This model loops ("Invoic") from its first tokens; with the guard's span at 12 a 64-token
    # page is cut at the first check, while 8-token pages are too short to be a loop.
    engine = MlxVlmEngine(ModelConfig(path=str(tiny_model)), repeat_min_tokens=12)
    session = engine.open_session(capacity=4)
    try:
        done = run(session, {"loop": {"max_tokens": 64}, "b": {"max_tokens": 8}, "c": {"max_tokens": 8}})
    finally:
        session.close()
    loop = done["loop"].result
    assert loop.finish_reason == "repetition" and loop.generation_tokens < 64
    assert loop.text.count("Invoic") == 1            # what came before the loop, plus one copy
    assert [(done[k].result.finish_reason, done[k].result.generation_tokens) for k in "bc"] == [("length", 8)] * 2


def test_a_page_over_its_time_budget_fails_alone(tiny_model) -> None:
    engine = MlxVlmEngine(ModelConfig(path=str(tiny_model)), repeat_min_tokens=10**6)
    session = engine.open_session(capacity=2, page_budget_s=0.4)
    try:
        done = run(session, {"long": {"max_tokens": 100_000}, "short": {"max_tokens": 8}})
    finally:
        session.close()
    # 0.4 s for each page that decoded beside it: a page in a batch of n shares the device n ways
    assert isinstance(done["long"].error, PageTimeout) and done["long"].error.retryable
    assert "0.4 s for each of the 2 pages decoding with it" in str(done["long"].error)
    assert done["short"].result.generation_tokens == 8


def test_a_page_that_cannot_be_prepared_fails_alone(engine) -> None:
    session = engine.open_session(capacity=2)
    try:
        done = run(session, {"bad": {"max_tokens": 4, "mode": "huge"}, "good": {"max_tokens": 4}})
    finally:
        session.close()
    assert isinstance(done["bad"].error, EngineError) and "unknown resolution mode" in str(done["bad"].error)
    assert done["good"].result.generation_tokens == 4


def test_batch_1_and_batch_8_both_complete_every_page(engine) -> None:
    pages = {f"p{n}": {"max_tokens": 12} for n in range(8)}
    for capacity in (1, 8):
        session = engine.open_session(capacity=capacity)
        try:
            done = run(session, pages)
        finally:
            session.close()
        assert sorted(done) == sorted(pages)
        assert all(f.result.text and f.result.generation_tokens > 0 for f in done.values())


def test_pages_prefilled_together_read_as_each_alone_whatever_their_prompt_lengths(engine) -> None:
    """Eight waiting pages join in one prefill (prompts of different lengths: three modes); greedy
    decoding gives each the tokens it gets when it is prefilled alone."""
    assert (prefill_group(1), prefill_group(2), prefill_group(16), prefill_group(64)) == (1, 1, 2, 8)
    pages = {f"p{n}": {"max_tokens": 10, "mode": ("tiny", "base", "gundam")[n % 3]} for n in range(8)}
    texts = {}
    for capacity in (1, 64):
        session = engine.open_session(capacity=capacity)
        try:
            texts[capacity] = {k: f.result.text for k, f in run(session, pages).items()}
        finally:
            session.close()
    assert texts[64] == texts[1]


def test_a_freed_slot_is_refilled_while_others_decode(engine) -> None:
    session = engine.open_session(capacity=2)
    try:
        assert session.add("long", samples.page_image(1), prompt=PROMPT, mode="tiny", max_tokens=40) is None
        assert session.add("short", samples.page_image(2), prompt=PROMPT, mode="tiny", max_tokens=2) is None
        ended: list[str] = []
        while "short" not in ended:
            ended += [f.key for f in session.step()]
        session.add("next", samples.page_image(3), prompt=PROMPT, mode="tiny", max_tokens=2)
        while "next" not in ended:
            ended += [f.key for f in session.step()]
        assert "long" not in ended and len(session) == 1   # it joined while "long" still decoded
    finally:
        session.close()


def test_pages_taken_ahead_wait_encoded_and_never_decode_beyond_the_limit(engine) -> None:
    """The worker hands the session its limit and `ahead` pages more (encoded on the device while
    the others decode): at most `limit` pages generate a token in any step, and every page reads
    as it does alone."""
    pages = {f"p{n}": {"max_tokens": 6 + n % 3} for n in range(6)}
    alone = engine.open_session(capacity=1)
    try:
        expected = {k: f.result.text for k, f in run(alone, pages).items()}
    finally:
        alone.close()
    session = engine.open_session(capacity=16)
    session.limit = 4
    assert session.ahead == prefill_group(16) == 2
    widest, texts = 0, {}
    try:
        for n, (key, kw) in enumerate(pages.items()):   # limit + ahead pages, all at once
            assert session.add(key, samples.page_image(n + 1, (900, 1200)), prompt=PROMPT, mode="tiny", **kw) is None
        while len(session):
            before = session.generated
            texts.update((f.key, f.result.text) for f in session.step())
            widest = max(widest, session.generated - before)
    finally:
        session.close()
    assert widest == 4 and texts == expected
    session = engine.open_session(capacity=16)
    session.limit = 1                  # never under a prefill group: a group must fit to join
    assert session.limit == 2
    session.close()


def test_engines_without_a_session_run_one_page_per_step() -> None:
    fake = open_session(FakeEngine(ModelConfig(path="fake")), capacity=8)
    assert isinstance(fake, SerialSession)
    done = run(fake, {"a": {"max_tokens": 4}, "b": {"max_tokens": 4}})
    assert {k: f.result.text for k, f in done.items()} == {"a": "page 900x1200", "b": "page 900x1200"}
    crashing = run(SerialSession(CrashingEngine(ModelConfig(path="x"))), {"a": {"max_tokens": 4}})
    assert isinstance(crashing["a"].error, EngineError)


def test_the_real_engine_gives_its_batched_session(engine) -> None:
    session = open_session(engine, capacity=4, page_budget_s=60)
    assert isinstance(session, MlxSession)
    session.close()


# --- the in-flight tuner (a clock seam; no model) -------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(tuner: InFlightTuner, clock: Clock, tokens_per_s: float, seconds: float = 10.0) -> None:
    """Steps of 0.1 s with the batch full at a given aggregate rate, until the tuner decides."""
    before = (tuner.limit, tuner.settled)
    for _ in range(int(seconds / 0.1)):
        clock.now += 0.1
        tuner.observe(int(tokens_per_s * 0.1), tuner.limit)
        if (tuner.limit, tuner.settled) != before:
            return


def test_the_tuner_doubles_while_it_pays_and_settles_on_the_best() -> None:
    clock = Clock()
    tuner = InFlightTuner(8, 128, clock=clock)
    for rate in (100, 160, 260):      # 8 -> 16 -> 32: +60%, +62%
        feed(tuner, clock, rate)
    assert tuner.limit == 64 and not tuner.settled
    feed(tuner, clock, 270)           # 64: +4%, not worth the memory: back to 32
    assert (tuner.limit, tuner.settled) == (32, True)


def test_the_tuner_backs_off_when_a_bigger_batch_is_slower() -> None:
    clock = Clock()
    tuner = InFlightTuner(1, 8, clock=clock)
    feed(tuner, clock, 100)
    feed(tuner, clock, 90)
    assert (tuner.limit, tuner.settled) == (1, True)


def test_the_tuner_judges_only_full_batches() -> None:
    clock = Clock()
    tuner = InFlightTuner(4, 8, clock=clock)
    for _ in range(100):              # the queue ran dry: 2 of 4 in flight says nothing
        clock.now += 0.1
        tuner.observe(50, 2)
    assert (tuner.limit, tuner.best) == (4, None)


def test_a_configured_batch_and_memory_pressure_stop_the_tuner() -> None:
    clock = Clock()
    fixed = InFlightTuner(16, 16, fixed=True, clock=clock)
    feed(fixed, clock, 100)
    assert (fixed.limit, fixed.settled) == (16, True)
    tuner = InFlightTuner(2, 64, clock=clock)
    feed(tuner, clock, 100)
    assert tuner.limit == 4
    tuner.hold()
    assert (tuner.limit, tuner.settled) == (2, True)
