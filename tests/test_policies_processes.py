"""
Key policies hold across gateways: two real `twistd -n majordomo` processes
share one database and one fake provider, and the limits set with the real
`majordomo keys policy` hold over both of them together.

 - A daily budget spent by 32 concurrent clients (streams and non-streams
   mixed) stops within one request per process of its limit, on either side;
   once it is spent (each gateway refused with nothing in flight) every
   client is refused at both; and the window's spent counter is the sum of
   the rows' costs exactly.  The same per User-Id, for 50 users.  (While
   requests are in flight a refusal can be followed by an admission: their
   reservations, estimates above the exact costs, held the rest of the
   budget until they ended.  The tests log how often.)
 - A requests-per-minute limit driven hard for a whole calendar minute
   admits within 10% of the limit, never more.
 - A policy change, and clearing it, reach both processes within a second.

The provider never lies about usage: every answer uses exactly the output
tokens the request allows and fewer input tokens than the body has bytes,
so each exact cost is within the estimate admission reserved.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, utils
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from majordomo.policy.estimate import estimate_cost
from majordomo.pricing import PriceBook
from tests import support
from tests.gateway_processes import GatewayProcess, spawn_gateway, wait_ready

log = Logger()
T = TypeVar("T")

MODEL = "gpt-4o-mini"
ANSWERED_MODEL = "gpt-4o-mini-2024-07-18"
MAX_TOKENS = 4000


def _body(**members: Any) -> bytes:
    messages = [{"role": "user", "content": "Say hello"}]
    return json.dumps(
        {"model": MODEL, "max_tokens": MAX_TOKENS, **members, "messages": messages}
    ).encode()


# What the clients send, in turn: a JSON answer, a stream asking for usage,
# and a stream the gateway asks usage for.
BODIES = [
    _body(),
    _body(stream=True, stream_options={"include_usage": True}),
    _body(stream=True),
]
# How long the provider takes to answer: requests overlap at both gateways.
ANSWER_DELAY = 0.02
# A budget client stops after this many refusals (or this many requests).
REFUSALS_PER_CLIENT = 3
MAX_REQUESTS_PER_CLIENT = 60


def estimate(body: bytes) -> Decimal:
    """What admission reserves for C{body} (majordomo.policy.estimate, bundled prices)."""
    match = PriceBook.bundled().lookup("openai", MODEL)
    assert match is not None
    found = estimate_cost("openai", MODEL, len(body), json.loads(body), match.price)
    assert found is not None
    return found.cost


class HonestProvider(Resource):
    """
    OpenAI chat completions whose usage the request allows: completion tokens
    = max_tokens, prompt tokens a quarter of the body's bytes.  A stream ends
    with its usage chunk when the request asks for one (as OpenAI does).
    """

    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        raw = request.content.read()
        body = json.loads(raw)
        prompt, completion = max(1, len(raw) // 4), int(body["max_tokens"])
        if body.get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            answer = _stream(prompt, completion, bool(body.get("stream_options")))
        else:
            request.setHeader(b"content-type", b"application/json")
            answer = support.chat_completion(ANSWERED_MODEL, prompt, completion)
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))

        def finish() -> None:
            if not gone:
                request.write(answer)
                request.finish()

        reactor.callLater(ANSWER_DELAY, finish)
        return NOT_DONE_YET


def _stream(prompt: int, completion: int, with_usage: bool) -> bytes:
    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        event = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1764170230,
            "model": ANSWERED_MODEL,
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        chunk([{"index": 0, "delta": {"content": "Hello!"}}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "length"}]),
    ]
    if with_usage:
        total = prompt + completion
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        events.append(chunk([], usage))
    return b"".join(events) + b"data: [DONE]\n\n"


@dataclass
class _Answer:
    """One response a client received: status, headers, body, when it was sent."""

    code: int
    headers: Any
    content: bytes
    sent: float

    def retry_after(self) -> int | None:
        values = self.headers.getRawHeaders("retry-after")
        return int(values[0]) if values else None

    def error_code(self) -> str:
        return str(json.loads(self.content)["error"]["code"])


class TwoGatewaysTestCase(TestCase):
    """Two gateway processes, the honest provider, one database, one key."""

    timeout = 60

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        upstream_port = support.listen(HonestProvider())
        self.addCleanup(upstream_port.stopListening)
        self.env = support.test_env(
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port.getHost().port}",
            MAJORDOMO_STORAGE_FLUSH_INTERVAL="0.05",
        )
        self.gateways = [spawn_gateway(self, self.env) for _ in range(2)]
        self.sent = 0  # requests made through the gateways
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 128
        pool.retryAutomatically = False
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        return support.as_deferred(self._ready())

    async def _ready(self) -> None:
        await wait_ready(self.gateways)
        created = await self.majordomo("keys", "create", "--name", "policies")
        key_id = re.search(r"ID:\s+(\S+)", created)
        key = re.search(r"Key:\s+(\S+)", created)
        assert key_id is not None and key is not None, created
        self.key_id, self.key = key_id.group(1), key.group(1)

    async def majordomo(self, *args: str) -> str:
        """Run the real CLI; its output (it must succeed)."""
        out, err, code = await utils.getProcessOutputAndValue(
            support.MAJORDOMO_BIN, args, env=self.env
        )
        self.assertEqual(code, 0, (out + err).decode())
        return str(out.decode())

    async def call(self, gateway: GatewayProcess, body: bytes, **metadata: str) -> _Answer:
        """POST C{body} to C{gateway} with the key (and X-Majordomo-* C{metadata})."""
        headers: dict[str | bytes, list[str | bytes]] = {
            "Content-Type": ["application/json"],
            "Authorization": ["Bearer sk-test-provider-key"],
            "X-Majordomo-Key": [self.key],
        }
        headers.update({f"X-Majordomo-{name}": [value] for name, value in metadata.items()})
        sent = time.time()
        self.sent += 1
        url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
        response = await self.http.post(url, data=body, headers=headers)
        content = await treq.content(response)
        return _Answer(int(response.code), response.headers, content, sent)

    async def all_rows_written(self) -> None:
        """Wait until every request sent has its row (both gateways' writers flushed)."""

        def written() -> bool:
            rows = support.run_sql(
                "SELECT count(*) FROM llm_requests WHERE majordomo_api_key_id = %s",
                (self.key_id,),
            )
            found = int(rows[0][0])
            self.assertLessEqual(found, self.sent)
            return found == self.sent

        await support.wait_for(written, timeout=30)


class BudgetsAcrossGatewaysTests(TwoGatewaysTestCase):
    """Budgets spent through both gateways at once, and policy changes reaching both."""

    async def spend(self, client: int, **metadata: str) -> list[int]:
        """
        One of many concurrent clients: requests to each gateway in turn, the
        kinds of body in turn, until its third refusal; the statuses it got.
        """
        codes: list[int] = []
        while codes.count(429) < REFUSALS_PER_CLIENT:
            self.assertLess(len(codes), MAX_REQUESTS_PER_CLIENT, f"{metadata} never refused")
            body = BODIES[(client + len(codes)) % len(BODIES)]
            gateway = self.gateways[(client + len(codes)) % 2]
            answer = await self.call(gateway, body, Client=f"c{client}", **metadata)
            codes.append(answer.code)
            if answer.code == 429:
                self.assertEqual(answer.error_code(), "budget_exceeded")
                self.assertGreaterEqual(answer.retry_after() or 0, 1)
            else:
                self.assertEqual(answer.code, 200, answer.content[:300])
                if b'"stream": true' in body:
                    self.assertTrue(answer.content.endswith(b"data: [DONE]\n\n"))
        return codes

    async def drain(self, **metadata: str) -> None:
        """
        One request at a time (nothing else in flight for the bucket), to
        each gateway in turn, until both refuse: a gateway that refused with
        nothing in flight never admits again, as nothing it holds can grow
        (until another gateway gives an idle share back, after C{lease_ttl / 2}).
        """
        refused: set[int] = set()
        for n in range(MAX_REQUESTS_PER_CLIENT):
            gateway, body = self.gateways[n % 2], BODIES[n % len(BODIES)]
            answer = await self.call(gateway, body, Client="drain", **metadata)
            if answer.code == 429:
                self.assertEqual(answer.error_code(), "budget_exceeded")
                refused.add(n % 2)
                if len(refused) == 2:
                    return
            else:
                self.assertEqual(answer.code, 200, answer.content[:300])
                self.assertNotIn(n % 2, refused, f"{metadata}: admitted again after refusing")
        self.fail(f"{metadata} was never refused by both gateways")

    async def exhaust(self, buckets: dict[str, dict[str, str]], clients: int) -> None:
        """
        Spend each bucket's budget: C{clients} concurrent clients each, then
        a drain; then every client once more at each gateway, all at once,
        and all refused.  Logs how often a client was admitted after a
        refusal in the concurrent phase (refused while reservations in flight,
        estimates above the exact costs, held the rest of the budget).
        """

        async def bucket(metadata: dict[str, str]) -> list[list[int]]:
            codes = await _together(self.spend(c, **metadata) for c in range(clients))
            await self.drain(**metadata)
            return codes

        results = [c for codes in await _together(map(bucket, buckets.values())) for c in codes]
        last = [
            self.call(gateway, body, Client=f"c{c}", **metadata)
            for metadata in buckets.values()
            for c in range(clients)
            for gateway, body in zip(self.gateways, BODIES, strict=False)
        ]
        self.assertEqual({a.code for a in await _together(last)}, {429})
        readmitted = [codes for codes in results if 200 in codes[codes.index(429) :]]
        log.info(
            "{n} of {all} clients were admitted after a refusal, {times} times in all; e.g. {e}",
            n=len(readmitted),
            all=len(results),
            times=sum(codes[codes.index(429) :].count(200) for codes in readmitted),
            e=readmitted[:3],
        )

    def assertBudgetHeld(self, budget: Decimal, per: str | None, buckets: set[str]) -> None:
        """
        Per bucket, from the rows: the spend exceeds the budget by at most
        one request per process, falls short of it by less than one estimate
        per process, and the bucket's spent counter is SUM(total_cost) exactly.
        """
        one = max(estimate(body) for body in BODIES)
        rows = support.run_sql(
            "SELECT coalesce(raw_metadata->>%s, ''), coalesce(sum(total_cost), 0), "
            "coalesce(max(total_cost), 0), count(*) FILTER (WHERE status_code = 200), "
            "count(*) FILTER (WHERE status_code = 200 AND total_cost IS NULL) "
            "FROM llm_requests WHERE majordomo_api_key_id = %s GROUP BY 1",
            (per or "-", self.key_id),
        )
        self.assertEqual({row[0] for row in rows}, buckets)
        counters = self.counters()
        self.assertEqual(set(counters), buckets)
        shortfalls = []
        for name, spent, most, answered, unpriced in rows:
            self.assertEqual(unpriced, 0, f"{name!r}: answers without a cost")
            self.assertLessEqual(spent, budget + 2 * most, f"{name!r} overshoots")
            self.assertGreaterEqual(spent, budget - 2 * one, f"{name!r} stops short")
            self.assertEqual(counters[name], spent, f"{name!r}: counter and rows disagree")
            shortfalls.append((budget - spent, answered, most))
        log.info(
            "{n} bucket(s), budget {budget} each, estimate {one}: {answers} answers; largest "
            "cost {most}; spend minus budget from {over} to {under} ({low:.2f} to {high:.2f} "
            "estimates below)",
            n=len(rows),
            budget=budget,
            one=one,
            answers=sorted({answered for _, answered, _ in shortfalls}),
            most=max(most for _, _, most in shortfalls),
            over=-max(short for short, _, _ in shortfalls),
            under=-min(short for short, _, _ in shortfalls),
            low=min(short for short, _, _ in shortfalls) / one,
            high=max(short for short, _, _ in shortfalls) / one,
        )

    def counters(self) -> dict[str, Decimal]:
        """Each bucket's spent counter of the key's daily budget."""
        rows = support.run_sql(
            "SELECT bucket, sum(spent) FROM policy_windows "
            "WHERE majordomo_api_key_id = %s AND kind = 'day' GROUP BY bucket",
            (self.key_id,),
        )
        return {bucket: Decimal(spent) for bucket, spent in rows}

    def test_daily_budget_over_two_processes(self) -> defer.Deferred[None]:
        """32 concurrent clients on one key with a daily budget of ~40 answers."""

        async def go() -> None:
            budget = Decimal("0.1")
            await self.majordomo(
                "keys", "policy", "set", self.key_id, "--budget", str(budget), "--period", "day"
            )
            await self.exhaust({"": {}}, clients=32)
            await self.all_rows_written()
            self.assertBudgetHeld(budget, None, {""})

        return support.as_deferred(go())

    def test_per_user_budgets_over_two_processes(self) -> defer.Deferred[None]:
        """50 users, 2 concurrent clients each, a daily budget of ~10 answers per User-Id."""

        async def go() -> None:
            budget = Decimal("0.025")
            await self.majordomo(
                "keys", "policy", "set", self.key_id, "--budget", str(budget),
                "--period", "day", "--per", "User-Id",
            )  # fmt: skip
            users = {f"user-{n:02d}": {"User-Id": f"user-{n:02d}"} for n in range(50)}
            await self.exhaust(users, clients=2)
            await self.all_rows_written()
            self.assertBudgetHeld(budget, "User-Id", set(users))

        return support.as_deferred(go())

    def test_policy_change_reaches_both_within_a_second(self) -> defer.Deferred[None]:
        """
        With the key cached at both gateways, `keys policy set --deny-models`
        makes both refuse (403) within 1 s of the command's exit, polled every
        50 ms; `keys policy clear --deny-models` makes both admit again likewise.
        """

        async def until_both(code: int) -> float:
            returned = time.time()
            waiting = list(self.gateways)
            while waiting:
                answers = await _together(self.call(g, BODIES[0]) for g in waiting)
                waiting = [g for g, a in zip(waiting, answers, strict=True) if a.code != code]
                elapsed = time.time() - returned
                self.assertLess(elapsed, 1.0, f"{len(waiting)} gateway(s) not yet at {code}")
                if waiting:
                    await support.sleep(0.05)
            return elapsed

        async def go() -> None:
            for gateway in self.gateways:  # each caches the key and its (empty) policy
                self.assertEqual((await self.call(gateway, BODIES[0])).code, 200)
            latencies = []
            for _ in range(3):
                await self.majordomo("keys", "policy", "set", self.key_id, "--deny-models", "gpt-*")
                applied = await until_both(403)
                await self.majordomo("keys", "policy", "clear", self.key_id, "--deny-models")
                latencies.append((round(applied, 3), round(await until_both(200), 3)))
            log.info("policy change latencies (set, clear), s: {l}", l=latencies)

        return support.as_deferred(go())


class RateLimitAcrossGatewaysTests(TwoGatewaysTestCase):
    """A requests-per-minute limit over two gateways, for one calendar minute."""

    # Up to a minute's wait for the window to begin, the minute, and the setup.
    timeout = 170
    RPM = 600

    def test_rpm_over_a_calendar_minute(self) -> defer.Deferred[None]:
        """
        8 clients (4 per gateway) drive requests as fast as they are answered
        from just after a minute boundary to just after the next: the
        requests admitted in that minute are within 10% of the limit and never
        above it, and every refusal is a rate limit with Retry-After pointing
        at the minute's end.
        """

        async def drive(gateway: GatewayProcess, until: float, answers: list[_Answer]) -> None:
            while time.time() < until:
                answers.append(await self.call(gateway, BODIES[len(answers) % len(BODIES)]))

        async def go() -> None:
            await self.majordomo("keys", "policy", "set", self.key_id, "--rpm", str(self.RPM))
            start = math.floor(time.time() / 60) * 60 + 60
            await support.sleep(start - time.time() + 0.05)
            end = start + 60
            answers: list[_Answer] = []
            await _together(drive(self.gateways[n % 2], end + 0.5, answers) for n in range(8))
            await self.all_rows_written()
            admitted = support.run_sql(
                "SELECT count(*) FROM llm_requests WHERE majordomo_api_key_id = %s "
                "AND status_code = 200 AND created_at >= to_timestamp(%s) "
                "AND created_at < to_timestamp(%s)",
                (self.key_id, start, end),
            )[0][0]
            refused = [a for a in answers if a.code == 429]
            self.assertEqual({a.code for a in answers}, {200, 429})
            for answer in refused:
                self.assertEqual(answer.error_code(), "rate_limit_exceeded")
                retry_after = answer.retry_after()
                assert retry_after is not None, "a rate limit refusal without Retry-After"
                window_end = math.floor(answer.sent / 60) * 60 + 60
                self.assertTrue(1 <= retry_after <= 60, retry_after)
                self.assertLess(abs(answer.sent + retry_after - window_end), 2.0)
            log.info(
                "rpm {rpm}: {admitted} admitted in the minute ({share:.1%}), "
                "{sent} requests sent, {refused} refused",
                rpm=self.RPM,
                admitted=admitted,
                share=admitted / self.RPM,
                sent=len(answers),
                refused=len(refused),
            )
            self.assertLessEqual(admitted, self.RPM)
            self.assertGreaterEqual(admitted, self.RPM * 0.9)

        return support.as_deferred(go())


async def _together(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run C{coroutines} concurrently; their results, in order (the first failure fails)."""
    return await defer.gatherResults(
        [defer.Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
    )
