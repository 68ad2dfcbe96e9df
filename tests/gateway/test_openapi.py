"""The OpenAPI description: served, valid OpenAPI 3.1, covering exactly the routes a node installs, and in step
with the limits of the validators it describes (tests/gateway/test_fuzz_schema.py checks it against a live node)."""

from __future__ import annotations

import httpx
import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from p2pnode import coordinator
from p2pnode.config import NodeConfig
from p2pnode.core.identity import Identity
from p2pnode.errors import GatewayError
from p2pnode.gateway import chat_requests, distributed_api, openapi
from p2pnode.gateway.app import GatewayApp
from p2pnode.node import Node


async def test_served_at_openapi_json():
    app = GatewayApp()
    openapi.install(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dcn") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == openapi.openapi_schema()


def test_is_valid_openapi_3_1():
    errors = [f"{list(e.instance_path)}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(openapi.openapi_schema())]
    assert not errors


def test_documents_exactly_the_routes_a_node_installs(tmp_path):
    node = Node(NodeConfig(data_dir=tmp_path, name="n", user="u", mdns=False), Identity.generate())
    installed = {(method.lower(), "/" + "/".join(pattern)) for method, pattern, _ in node.gateway._routes}
    documented = {(method, path) for path, item in openapi.openapi_schema()["paths"].items() for method in item}
    assert installed == documented


def test_every_operation_documents_refusals_as_error_objects():
    for path, item in openapi.openapi_schema()["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"401", "403", "413", "429"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"]
            for status, response in responses.items():
                if status >= "400":
                    assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def test_mirrored_limits_match_their_sources():
    assert openapi.STRATEGIES == coordinator.STRATEGIES
    assert (openapi.MAX_COUNT, openapi.MAX_MEMORY_MB) == (distributed_api._MAX_COUNT, distributed_api._MAX_MEMORY_MB)
    json_types = {(int,): "integer", (int, float): "number"}
    mirrored = {name: json_types.get(kinds, kinds) for name, kinds in chat_requests._OPTION_TYPES.items() if name != "stop"}
    assert mirrored == openapi.OPTION_TYPES


@pytest.mark.parametrize("field, edge, beyond", [
    ("fanout", openapi.MAX_FANOUT, openapi.MAX_FANOUT + 1),
    ("timeout", openapi.MAX_TIMEOUT, openapi.MAX_TIMEOUT + 0.001),
    ("models", ["m"] * openapi.MAX_ENSEMBLE, ["m"] * (openapi.MAX_ENSEMBLE + 1)),
])
def test_distributed_bounds_match_the_coordinator(field, edge, beyond):
    parse = coordinator.DistributedOptions.parse
    parse({field: edge}, None, "best")
    with pytest.raises(GatewayError):
        parse({field: beyond}, None, "best")


@pytest.mark.parametrize("name", sorted(openapi.EXAMPLES))
def test_examples_match_their_schemas(name):
    spec = openapi.openapi_schema()
    validator = jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **spec})
    assert not [e.message for e in validator.iter_errors(openapi.EXAMPLES[name])]
