"""The server keeps the contract it publishes at /openapi.json (schemathesis, in process).

schemathesis runs every phase its command line runs (examples, boundary-value
coverage, fuzzing with valid and invalid data, stateful) against the app over
ASGI. Every response must have a documented status code, content type, headers
and body shape; the server must accept what the schema allows, reject what it
forbids, and never answer 5xx. Bounded for CI: a fixed seed and a fixed number
of generated examples per operation and mode.
"""

import schemathesis
from schemathesis.engine import events, from_schema

from makevl.serving.app import create_app
from serving.serving_testing import NO_SHEDDING

CONFIG = {"seed": 20261125, "generation": {"max-examples": 25}, "cache": {"enabled": False}}


def _failures(event: events.ScenarioFinished) -> list[str]:
    found = []
    for case_id, checks in event.recorder.checks.items():
        for check in checks:
            if check.failure_info is not None:
                request = event.recorder.cases[case_id].value
                found.append(
                    f"{event.phase.name} {event.label}: {check.name}: "
                    f"{check.failure_info.failure.title}\n  {request.as_curl_command()}"
                )
    return found


def test_api_keeps_its_openapi_contract(served_index):
    # The engine behind `schemathesis run`, over ASGI: every phase, one event stream. (Its
    # pytest plugin cannot load a schema from a fixture under pytest 9.)
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(served_index, batching=NO_SHEDDING), config=config
    )
    scenarios, failures = 0, []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            failures += _failures(event)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"schemathesis error: {event}")
    assert scenarios >= 5 * 3  # 5 operations, at least 3 phases each
    assert not failures, "\n".join(failures)
