"""A change of a budget that contradicts itself is refused, naming its field, and changes
nothing."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app

from ..conftest import Settings, replace_settings
from .conftest import bearer, make_key, make_project
from .test_endpoints import assert_problem

BUDGETS = "/v1/budgets"


async def test_a_secret_sent_with_the_webhooks_removal_is_refused_and_the_webhook_stays(
    api_settings: Settings, redis_clean: None
) -> None:
    """Before, `{"webhook_url": null, "webhook_secret": "..."}` answered 200: the secret was
    dropped without a word and the webhook removed, where a secret without a webhook is a 422
    when a budget is created."""
    allowed = replace_settings(api_settings, webhook_allowed_hosts=("127.0.0.1",))
    async with AsyncTestClient(app=create_app(allowed)) as client:
        await make_project(client, "hooked")
        key = bearer((await make_key(client, "hooked", ["admin"]))["key"])
        made = await client.post(
            BUDGETS, headers=key,
            json={"name": "b", "limit_usd": "1", "period": "day",
                  "webhook_url": "http://127.0.0.1:8999/hook", "webhook_secret": "s" * 24},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        path = f"{BUDGETS}/{made.json()['id']}"
        refused = await client.patch(
            path, headers=key, json={"webhook_url": None, "webhook_secret": "t" * 24}
        )
        problem = assert_problem(refused, 422, "webhook_secret needs a webhook_url")
        assert problem["fields"] == ["webhook_secret"]
        assert (await client.get(path, headers=key)).json()["webhook_url"] == (
            "http://127.0.0.1:8999/hook"
        )
        # the removal alone (or with a null secret) is what it always was
        removed = await client.patch(
            path, headers=key, json={"webhook_url": None, "webhook_secret": None}
        )
        assert removed.status_code == 200, removed.text
        assert removed.json()["webhook_url"] is None
