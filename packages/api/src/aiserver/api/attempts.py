"""Failed attempts to authenticate, per client address: how many, and how long an address must
wait (aiserver.api.auth says what counts).

- `SharedAttempts` counts in Redis, for every API process that shares it (replicas, uvicorn
  workers): a client behind a load balancer gets the limit once, not once per process. One Lua
  script reads and writes an address's count at a time, on Redis's clock, and counts a failure
  only while the address is under the limit: requests sent at once get at most `limit`
  answers that say their credential is wrong, the others are told to wait.
- `FailedAttempts` counts in one process: where Redis does not answer, each process counts on
  its own until it does again (the limit still holds per process).

Both keep the same rule: an address with `limit` failures in the last `window_s` seconds must
wait until the oldest of them is `window_s` old; at most `max_addresses` addresses are
remembered, each until its failures are out of the window, and while that many are, every
other address counts as one (`OVERFLOW`).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from redis.exceptions import RedisError

from aiserver.core_db.logging import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = get_logger(__name__)

#: The most client addresses a process remembers failures of (a few MB at the default limit).
MAX_ADDRESSES: Final = 10_000
#: What the addresses past MAX_ADDRESSES count as, together (no address looks like this).
OVERFLOW: Final = "(addresses past the bound)"


class Verdict(NamedTuple):
    """What became of a failed attempt: counted (it was within the limit: the client is told
    the credential is not valid), or not (the address had reached the limit meanwhile: the
    client is told to wait, as if it had been refused before its credential was checked); and
    the whole seconds the address must wait now (0: none)."""

    counted: bool
    wait: int


class FailedAttempts:
    """The times of the recent failed attempts of each client address, in this process.

    An address with `limit` failures in the last `window_s` seconds must wait until the oldest
    of them is `window_s` old. At most `max_addresses` addresses are remembered, each until its
    failures are all out of the window. While that many are, every other address counts as one
    (`OVERFLOW`): an attacker that rotates through more addresses than that gets `limit`
    attempts per window for all the others together, and this never grows past the bound (no
    address is forgotten while it must wait, which would give it `limit` attempts more). The
    price, under such a flood only: a client at a new address shares the others' count.
    `limit` 0 refuses nobody.
    """

    def __init__(
        self, limit: int, window_s: float, *, max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> the times of its last `limit` failures, oldest first; the addresses in
        # the order of their last failure, so that the first ones are the first to forget
        self._failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait(self, address: str) -> int:
        """Whole seconds until `address` may try again; 0: it may now."""
        if self.limit == 0:
            return 0
        now = self._clock()
        self._forget(now)
        times = self._failures.get(self._counted_as(address), ())
        if len(times) < self.limit:
            return 0
        left = times[0] + self.window_s - now
        return math.ceil(left) if left > 0 else 0

    def failed(self, address: str) -> bool:
        """Count a failed attempt of `address`; whether it must wait now."""
        if self.limit == 0:
            return False
        now = self._clock()
        self._forget(now)
        key = self._counted_as(address)
        self._failures[key] = (*self._failures.pop(key, ()), now)[-self.limit :]
        return self.wait(address) > 0

    def attempt(self, address: str) -> Verdict:
        """Count a failed attempt of `address` unless it is at the limit already (then it must
        wait, and the attempt is not counted), as `SharedAttempts.failed` does in Redis."""
        wait = self.wait(address)
        if wait:
            return Verdict(counted=False, wait=wait)
        self.failed(address)
        return Verdict(counted=True, wait=self.wait(address))

    def _counted_as(self, address: str) -> str:
        """The key `address` counts under: its own, or `OVERFLOW` while the bound is reached."""
        if address in self._failures or len(self._failures) < self.max_addresses:
            return address
        return OVERFLOW

    def _forget(self, now: float) -> None:
        """Drop the addresses whose last failure is out of the window (they come first)."""
        while self._failures:
            address, times = next(iter(self._failures.items()))
            if times[-1] + self.window_s > now:
                return
            del self._failures[address]


#: Redis keys, all with one hash tag (one slot, should the Redis be a cluster): the index of the
#: addresses remembered (by their last failure), and each address's failures (by their times)
#: under the prefix. The script names every key it touches (KEYS).
INDEX: Final = "{aiserver:auth-failures}"
PREFIX: Final = "{aiserver:auth-failures}:"
#: After Redis failed to answer, how long each process counts on its own before asking again.
RETRY_S: Final = 5.0

#: Ask how many milliseconds an address must wait, or (ARGV[4] "1") count a failure of it
#: first unless it is at the limit already: check and count in one step, so that requests sent
#: at once cannot all pass the check before any of them is counted. Answers {counted (1 or
#: 0), wait in ms}. Redis's clock (TIME) serves every process alike. KEYS: the index, the
#: address's key, the overflow's key; ARGV: the limit, the window in ms, the most addresses,
#: count or ask, a new failure's id, the address, what the addresses past the bound count as.
_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit, window, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = KEYS[1]
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - window)
local counted, key = ARGV[6], KEYS[2]
if not redis.call('ZSCORE', index, counted) and redis.call('ZCARD', index) >= most then
  counted, key = ARGV[7], KEYS[3]
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local added = 0
if ARGV[4] == '1' and redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[5])
  redis.call('PEXPIRE', key, window)
  redis.call('ZADD', index, now, counted)
  redis.call('PEXPIRE', index, window)
  added = 1
end
local wait = 0
if redis.call('ZCARD', key) >= limit then
  local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  wait = math.max(0, oldest + window - now)
end
return {added, wait}
"""


class SharedAttempts:
    """The failed attempts of each client address, in Redis (`_SCRIPT`), shared by every API
    process using it; in this process (`local`) while Redis does not answer (asked again every
    RETRY_S), which the log says when it begins and when it ends. At most `max_addresses`
    addresses are kept, each key until its failures are out of the window. `limit` 0 refuses
    nobody and asks Redis nothing."""

    def __init__(
        self, redis: Redis, limit: int, window_s: float, *, max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.local = FailedAttempts(limit, window_s, max_addresses=max_addresses, clock=clock)
        self._window_ms = math.ceil(window_s * 1000)
        self._script = redis.register_script(_SCRIPT)
        self._clock = clock
        self._alone_until: float | None = None  # counting in this process: Redis did not answer
        self._probing = False  # one request asks Redis again after RETRY_S; the rest count alone

    @property
    def limit(self) -> int:
        return self.local.limit

    @property
    def window_s(self) -> float:
        return self.local.window_s

    async def wait(self, address: str) -> int:
        """Whole seconds until `address` may try again; 0: it may now."""
        if self.limit == 0:
            return 0
        return (await self._ask(address, count=False)).wait

    async def failed(self, address: str) -> Verdict:
        """Count a failed attempt of `address` unless it is at the limit already (then it must
        wait, and the attempt is not counted)."""
        if self.limit == 0:
            return Verdict(counted=True, wait=0)
        return await self._ask(address, count=True)

    async def _ask(self, address: str, *, count: bool) -> Verdict:
        if self._alone_until is None:
            return await self._shared(address, count=count)
        # counting alone: until RETRY_S has passed, and while one request asks Redis again (a
        # Redis that hangs would hold every request for its timeouts otherwise)
        if self._clock() < self._alone_until or self._probing:
            return self._local(address, count=count)
        self._probing = True
        try:
            return await self._shared(address, count=count)
        finally:
            self._probing = False

    async def _shared(self, address: str, *, count: bool) -> Verdict:
        keys = [INDEX, PREFIX + address, PREFIX + OVERFLOW]
        mode = "1" if count else "0"
        args: list[str | int] = [self.limit, self._window_ms, self.local.max_addresses, mode,
                                 secrets.token_hex(8), address, OVERFLOW]  # fmt: skip
        try:
            added, left_ms = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            if self._alone_until is None:
                log.warning(
                    "failed attempts to authenticate are counted in this process only: Redis "
                    "did not answer", error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip
            self._alone_until = self._clock() + RETRY_S
            return self._local(address, count=count)
        if self._alone_until is not None:
            log.info("failed attempts to authenticate are counted in Redis again")
            self._alone_until = None
        return Verdict(counted=bool(added), wait=math.ceil(int(left_ms) / 1000))

    def _local(self, address: str, *, count: bool) -> Verdict:
        if count:
            return self.local.attempt(address)
        return Verdict(counted=False, wait=self.local.wait(address))
