"""ray-cluster.yaml is a real cluster-launcher file: it validates against the schema Ray ships."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())


def test_validates_against_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)


def test_a_schema_violation_is_caught():
    # The check above can fail: the same schema rejects a node type with a bad worker count.
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    bad = _config()
    bad["available_node_types"]["cpu_workers"]["min_workers"] = "many"
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted a non-integer min_workers")


def test_head_serves_and_pins_the_log_with_a_custom_resource():
    cfg = _config()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("orchestrator_head") == 1
    start = " ".join(cfg["head_start_ray_commands"])
    assert "orchestrator_head" in start and "orchestrator serve" in start
    assert "ORCH_DATA_DIR=/data" in start  # the DuckDB file lives on the persistent volume
    volume = head["node_config"]["BlockDeviceMappings"][0]["Ebs"]
    assert volume["DeleteOnTermination"] is False


def test_worker_groups_and_bounds():
    cfg = _config()
    groups = cfg["available_node_types"]
    gpu = [g for g in groups.values() if g["resources"].get("GPU")]
    cpu = [name for name, g in groups.items() if not g["resources"].get("GPU") and name != cfg["head_node_type"]]
    assert gpu and cpu
    for name, group in groups.items():
        if name == cfg["head_node_type"]:
            continue
        assert 0 <= group["min_workers"] <= group["max_workers"] <= cfg["max_workers"]
    assert any("pip install" in c and "[vllm]" in c for c in cfg["setup_commands"])


def test_agents_run_on_the_cpu_workers():
    # Serve starts with the head alone; agents asking for the CPU workers' resource wait for
    # one (and make the autoscaler start one) instead of all settling on the head.
    cfg = _config()
    groups = cfg["available_node_types"]
    start = " ".join(cfg["head_start_ray_commands"])
    assert "ORCH_AGENT_RESOURCE=orchestrator_agents" in start
    holders = [name for name, g in groups.items() if g["resources"].get("orchestrator_agents")]
    assert holders == ["cpu_workers"] and groups["cpu_workers"]["min_workers"] >= 1
