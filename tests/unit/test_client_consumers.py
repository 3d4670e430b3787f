"""The SDK's consumers are created in the one form whose filter the server's permissions can check."""

from __future__ import annotations

from nats.js.api import DeliverPolicy

from shared.client.sdk import _FreshName


def test_every_consumer_created_from_the_sdks_config_gets_a_fresh_name_and_keeps_the_rest() -> None:
    # nats-py's add_consumer starts with config.evolve(): the name it puts into
    # $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter> is drawn there, so the re-creation
    # of an ordered consumer after a gap cannot collide with the consumer it replaces
    config = _FreshName(filter_subject="cadre.events.alice.task_1.>", deliver_policy=DeliverPolicy.ALL)
    first, second = config.evolve(), config.evolve(deliver_subject="_INBOX_alice.x")
    assert first.name and second.name and first.name != second.name
    assert isinstance(second, _FreshName) and second.deliver_subject == "_INBOX_alice.x"
    assert first.filter_subject == second.filter_subject == "cadre.events.alice.task_1.>"
    assert "." not in first.name and "*" not in first.name and ">" not in first.name
