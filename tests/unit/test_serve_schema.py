"""schemathesis over the server's OpenAPI schema (tiny model, real uvicorn): no 5xx, and
every response matches the schema the server publishes."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from bank_support import make_lora_dir, publish_dir
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serve_support import serving

from adaptkit.kit import AdaptKit
from adaptkit.serve import ApiKeys, ServeConfig, Server


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("schema-world")
    kit = AdaptKit(root / "home", base=str(tiny_model_dir), shared_dir=root / "shared")
    lora = make_lora_dir(kit.base.model, root / "src", seed=1, rank=4)
    publish_dir(kit.registry, "alice", lora, str(tiny_model_dir))
    key, _ = ApiKeys(kit.registry).create("admin")
    with kit, Server(kit, ServeConfig(workers=0)) as server, serving(server) as url:
        yield url, key


def test_every_operation_keeps_to_its_schema(served) -> None:
    url, key = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    called: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def keeps_to_schema(case) -> None:
            # Valid-looking bodies may still name an unknown user or version (a documented
            # 404), so valid data need not be accepted; every other check runs.
            called.append(1)
            case.call_and_validate(
                base_url=url,
                headers={"Authorization": f"Bearer {key}"},
                excluded_checks=[positive_data_acceptance],
                timeout=60,
            )

        keeps_to_schema()
    assert len(called) > 5 * len(operations)  # the cases really ran
