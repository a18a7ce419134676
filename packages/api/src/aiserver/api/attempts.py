"""Failed attempts to authenticate, per client address: how many, and how long an address must
wait (aiserver.api.auth says what counts).

- `SharedAttempts` counts in Redis, for every API process that shares it (replicas, uvicorn
  workers): a client behind a load balancer gets the limit once, not once per process. One Lua
  script reads and writes an address's count at a time, on Redis's clock.
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
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

from aiserver.core_db.logging import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = get_logger(__name__)

#: The most client addresses a process remembers failures of (a few MB at the default limit).
MAX_ADDRESSES: Final = 10_000
#: What the addresses past MAX_ADDRESSES count as, together (no address looks like this).
OVERFLOW: Final = "(addresses past the bound)"


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


#: Redis keys: the index of the addresses remembered (by their last failure), and each
#: address's failures (by their times) under the prefix.
INDEX: Final = "aiserver:auth-failures"
PREFIX: Final = "aiserver:auth-failures:"

#: Count (ARGV[6] "1") or only ask; answer how many milliseconds the address must wait (0:
#: none). Redis's clock (TIME) serves every process alike. KEYS[1] the index; ARGV: the prefix,
#: the address, the limit, the window in ms, the most addresses, count or ask, a new failure's
#: id, what the addresses past the bound count as.
_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit, window, most = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local index = KEYS[1]
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - window)
local counted = ARGV[2]
if not redis.call('ZSCORE', index, counted) and redis.call('ZCARD', index) >= most then
  counted = ARGV[8]
end
local key = ARGV[1] .. counted
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if ARGV[6] == '1' then
  redis.call('ZADD', key, now, ARGV[7])
  redis.call('ZREMRANGEBYRANK', key, 0, -(limit + 1))
  redis.call('PEXPIRE', key, window)
  redis.call('ZADD', index, now, counted)
  redis.call('PEXPIRE', index, window)
end
if redis.call('ZCARD', key) < limit then
  return 0
end
local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
return math.max(0, oldest + window - now)
"""


class SharedAttempts:
    """The failed attempts of each client address, in Redis (`_SCRIPT`), shared by every API
    process using it; in this process (`local`) while Redis does not answer, which the log says
    when it begins and when it ends. At most `max_addresses` addresses are kept, each key until
    its failures are out of the window. `limit` 0 refuses nobody and asks Redis nothing."""

    def __init__(
        self, redis: Redis, limit: int, window_s: float, *, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.local = FailedAttempts(limit, window_s, max_addresses=max_addresses)
        self._script = redis.register_script(_SCRIPT)
        self._alone = False  # counting in this process: Redis did not answer

    async def wait(self, address: str) -> int:
        """Whole seconds until `address` may try again; 0: it may now."""
        return await self._ask(address, count=False)

    async def failed(self, address: str) -> bool:
        """Count a failed attempt of `address`; whether it must wait now."""
        return await self._ask(address, count=True) > 0

    async def _ask(self, address: str, *, count: bool) -> int:
        if self.limit == 0:
            return 0
        window_ms = math.ceil(self.window_s * 1000)
        args: list[str | int] = [PREFIX, address, self.limit, window_ms, self.max_addresses,
                                 "1" if count else "0", secrets.token_hex(8), OVERFLOW]  # fmt: skip
        try:
            left_ms = int(await self._script(keys=[INDEX], args=args))
        except (RedisError, OSError) as exc:
            if not self._alone:
                log.warning(
                    "failed attempts to authenticate are counted in this process only: Redis "
                    "did not answer", error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip
                self._alone = True
            return self._local(address, count=count)
        if self._alone:
            log.info("failed attempts to authenticate are counted in Redis again")
            self._alone = False
        return math.ceil(left_ms / 1000)

    def _local(self, address: str, *, count: bool) -> int:
        if count:
            self.local.failed(address)
        return self.local.wait(address)
