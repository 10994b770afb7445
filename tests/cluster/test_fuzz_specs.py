"""The schema-driven fuzzer: specs drawn from the generated CRD schema (tests/testground/spec_fuzz.py)
are created on the real control plane with the operator running. What the API server refuses is
counted (its error names a field); every job it accepts must end with a phase and a reason within
a bounded time, no Running job may lack its pod (a node held by a job whose pod cannot exist), and
the operator logs no traceback. `make fuzz` runs LORA_FUZZ_EXAMPLES=1000; `make test` a short run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_operator import trainer_pods

from testground.operator import OperatorProcess, install_crds, kwok_job, run_kubectl_json, storage_secret
from testground.spec_fuzz import specs

pytestmark = pytest.mark.cluster

COUNT = int(os.environ.get("LORA_FUZZ_EXAMPLES", "40"))
SETTLE_SECONDS = 60 + COUNT * 0.1
"""How long after the last create every accepted job has to show a phase and a reason."""
GROUP, VERSION, PLURAL = "lora-operator.io", "v1alpha1", "loratrainingjobs"


def told(body: dict) -> bool:
    """A phase and at least one condition with a reason."""
    status = body.get("status") or {}
    return bool(status.get("phase")) and any(c.get("reason") for c in status.get("conditions") or ())


def test_every_spec_the_apiserver_accepts_ends_with_a_phase_and_a_reason(ground, tmp_path):
    install_crds(ground)
    ns = f"fuzz-{uuid.uuid4().hex[:6]}"
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.add_gpu_nodes(2, gpus=1, gpu_type="fuzz", prefix="fuzz")
    operator = OperatorProcess(ground, tmp_path / "operator.log").start()
    api = client.CustomObjectsApi(ground.api_client())
    base = kwok_job("x", "fuzz")["spec"] | {"retryPolicy": {"maxRetries": 0, "backoffSeconds": 1,
                                                              "maxBackoffSeconds": 1}}
    accepted: dict[str, dict] = {}
    refusals = Counter()
    try:
        started = time.monotonic()
        for i, spec in enumerate(specs(base, COUNT)):
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LoraTrainingJob",
                    "metadata": {"name": f"f{i}", "namespace": ns}, "spec": spec}
            try:
                api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
                accepted[f"f{i}"] = spec
            except ApiException as err:
                assert err.status == 422, (err.status, err.body)
                message = json.loads(err.body)["message"]
                assert "spec" in message, message  # the refusal names the field
                field = next((c.get("field", "?") for c in json.loads(err.body)["details"]["causes"]), "?")
                refusals[field.split("[")[0]] += 1
        created = time.monotonic() - started

        def bodies() -> dict[str, dict]:
            return {j["metadata"]["name"]: j for j in run_kubectl_json(ground, "get", "ltj", "-n", ns)["items"]}

        def settled() -> bool:
            now = bodies()
            return all(told(now[n]) if n in now else "ttlSecondsAfterFinished" in s  # gone after its TTL
                       for n, s in accepted.items())
        try:
            ground.wait_for(settled, timeout=SETTLE_SECONDS, interval=1, what="every accepted job told")
        except TimeoutError:
            now = bodies()
            silent = {n: {"spec": s, "status": now[n].get("status")} for n, s in accepted.items()
                      if n in now and not told(now[n])}
            raise AssertionError(f"{len(silent)} jobs without a phase and reason: {json.dumps(silent)[:3000]}\n"
                                 f"{operator.tail(60)}") from None
        final = bodies()
        for name, body in final.items():
            if body["status"]["phase"] == "Running":  # it holds a node: its pod exists (or is just being made)
                pod = body["status"]["attempts"][-1]["pod"]
                ground.wait_for(lambda p=pod: p in {x["metadata"]["name"] for x in trainer_pods(ground, ns)},
                                timeout=35, what=f"{name}'s pod {pod}")
        log = operator.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]
        assert operator.proc.alive()
        reasons = Counter(next((c["reason"] for c in reversed(b["status"]["conditions"]) if c.get("reason")), "?")
                          for b in final.values())
        print(json.dumps({"fuzz": {"drawn": COUNT, "accepted": len(accepted), "refused": sum(refusals.values()),
                                   "refused_at": dict(refusals.most_common()), "created_seconds": round(created, 1),
                                   "phases": dict(Counter(b["status"]["phase"] for b in final.values())),
                                   "last_reason": dict(reasons.most_common()),
                                   "deleted_by_ttl": len(accepted) - len(final)}}))
    finally:
        operator.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false", check=False)
