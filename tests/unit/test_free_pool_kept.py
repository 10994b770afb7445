"""What a pass keeps of the nodes between passes stays what a fresh read would give: the node
list the job index keeps between node events (`JobIndex.gpu_nodes`) and the class key each node
view carries (`GpuNode.class_key`, by which `FreePool.build` groups the free nodes). Random node
events (join, relabel, taint, cordon, not ready, GPU count, delete, heartbeat) are played as kopf
plays them (the index first, then the handler's `node_event`); after each, the kept list and the
pool built on it are compared with a fresh listing and a pool grouped the way it was before
(two frozensets per free node, made in the pass), and a pass on each decides the same."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from lora_operator.job_index import JobIndex
from lora_operator.own_writes import OwnWrites
from lora_operator.scheduling import GpuNode, QueuedJob, Toleration, TrainerPod, schedule
from lora_operator.scheduling.fit import FreePool, resource_toleration
from lora_operator.views import gpu_node

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LABEL = "gpu-type"
ALWAYS = (resource_toleration("nvidia.com/gpu"),)
TYPES = ("h100", "a100", "l40s")
TAINTS = ({"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
          {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
          {"key": "nvidia.com/gpu", "effect": "NoSchedule"},
          {"key": "spot", "effect": "PreferNoSchedule"})


def node_body(name: str, *, gpu_type: str, gpus: int = 8, zone: str = "a", taints: tuple = (),
              unschedulable: bool = False, ready: bool = True, beat: int = 0, hostname: bool = False) -> dict:
    """A Node as the watch shows it: `beat` moves only a condition's heartbeat time; with `hostname`
    labelled with its name, as a kubelet does (a class of its own), else alike to others."""
    labels = {LABEL: gpu_type, "zone": zone, **({"kubernetes.io/hostname": name} if hostname else {})}
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": unschedulable, "taints": list(taints)},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastHeartbeatTime": f"2026-01-01T00:00:{beat % 60:02d}Z"}]}}


class KopfNodeIndex:
    """kopf's node index as `handlers.nodes_index` fills it: name -> [GpuNode]; an event whose view
    equals the stored one keeps the stored object (kopf's `Store._replace`)."""

    def __init__(self) -> None:
        self.index: dict[str, list[GpuNode]] = {}
        self.bodies: dict[str, dict] = {}

    def event(self, body: dict | None, name: str) -> None:
        if body is None:
            self.bodies.pop(name, None)
            self.index.pop(name, None)
            return
        self.bodies[name] = body
        node = gpu_node(body, "nvidia.com/gpu")
        if node is None:
            self.index.pop(name, None)
        elif self.index.get(name) != [node]:
            self.index[name] = [node]

    def fresh(self) -> list[GpuNode]:
        """Each node's view made now from its body (nothing kept), in the index's order."""
        return [gpu_node(self.bodies[name], "nvidia.com/gpu") for name in self.index]


def random_event(rng: random.Random, kopf: KopfNodeIndex, count: int) -> tuple[dict | None, str]:
    name = f"n{rng.randrange(count)}"
    body = kopf.bodies.get(name)
    if body is None:
        return node_body(name, gpu_type=rng.choice(TYPES), gpus=rng.choice((1, 4, 8)),
                         hostname=rng.random() < 0.2), name
    labels, spec = body["metadata"]["labels"], body["spec"]
    options = dict(gpu_type=labels[LABEL], gpus=int(body["status"]["allocatable"]["nvidia.com/gpu"]),
                   zone=labels["zone"], taints=tuple(spec["taints"]), unschedulable=spec["unschedulable"],
                   ready=body["status"]["conditions"][0]["status"] == "True",
                   hostname="kubernetes.io/hostname" in labels)
    kind = rng.choice(("relabel", "zone", "taint", "untaint", "cordon", "ready", "gpus", "delete", "beat", "beat"))
    if kind == "delete":
        return None, name
    if kind == "relabel":
        options["gpu_type"] = rng.choice(TYPES)
    elif kind == "zone":
        options["zone"] = rng.choice("abc")
    elif kind == "taint":
        options["taints"] = tuple({t["key"]: t for t in (*options["taints"], rng.choice(TAINTS))}.values())
    elif kind == "untaint" and options["taints"]:
        options["taints"] = options["taints"][1:]
    elif kind == "cordon":
        options["unschedulable"] = not options["unschedulable"]
    elif kind == "ready":
        options["ready"] = not options["ready"]
    elif kind == "gpus":
        options["gpus"] = rng.choice((0, 1, 4, 8))  # 0: no longer a GPU node (the index drops it)
    return node_body(name, beat=rng.randrange(60), **options), name


def grouped_as_before(nodes: list[GpuNode]) -> list[tuple]:
    """The free pool's classes as `FreePool.build` made them before the key was kept on the node view:
    keyed by two frozensets made here, per node; (labels, taints, GPUs, sorted names) in first-seen order."""
    groups: dict[tuple, tuple] = {}
    for node in nodes:
        key = (frozenset(node.labels.items()), frozenset(node.taints), node.gpus)
        groups.setdefault(key, (dict(node.labels), tuple(node.taints), node.gpus, []))[3].append(node.name)
    return [(labels, taints, gpus, sorted(names)) for labels, taints, gpus, names in groups.values()]


def classes(pool: FreePool) -> list[tuple]:
    return [(dict(c.labels), c.taints, c.gpus, list(c.names)) for c in pool.classes]


def free_of(nodes: list[GpuNode], busy: set[str]) -> list[GpuNode]:
    return [n for n in nodes if n.ready and n.schedulable and n.gpus > 0 and n.name not in busy]


def waiting_jobs(rng: random.Random) -> list[QueuedJob]:
    jobs = []
    for i in range(rng.randrange(1, 30)):
        jobs.append(QueuedJob(f"u{i}", rng.choice("ab"), f"j{i}", rng.choice((0, 5)), NOW,
                              node_selector=rng.choice(({}, {"zone": "a"}, {"zone": "b"})),
                              tolerations=rng.choice(((), (Toleration(key="dedicated", operator="Exists"),))),
                              gpu_type=rng.choice((None, *TYPES))))
    return jobs


def test_the_kept_node_list_and_classes_follow_every_node_event_as_a_fresh_read_would():
    for seed in range(20):
        rng = random.Random(seed)
        kopf, count = KopfNodeIndex(), rng.randrange(3, 25)
        index = JobIndex(OwnWrites(), nodes=kopf.index)
        for step in range(150):
            body, name = random_event(rng, kopf, count)
            kopf.event(body, name)
            index.node_event(name)
            if rng.random() < 0.3:
                continue  # events between passes: the next pass sees them all
            kept, fresh = index.gpu_nodes(), kopf.fresh()
            assert kept == fresh, (seed, step)
            busy = {n.name for n in fresh if rng.random() < 0.3}
            pool = FreePool.build(free_of(kept, busy), gpu_type_label=LABEL, always_tolerated=ALWAYS)
            assert classes(pool) == grouped_as_before(free_of(fresh, busy)), (seed, step)
            jobs, pods = waiting_jobs(rng), [TrainerPod(f"p-{n}", n, f"r-{n}", True) for n in sorted(busy)]
            assert schedule(jobs, kept, pods, NOW, gpu_type_label=LABEL, always_tolerated=ALWAYS) == \
                schedule(jobs, fresh, pods, NOW, gpu_type_label=LABEL, always_tolerated=ALWAYS), (seed, step)


def test_a_node_tainted_cordoned_or_deleted_between_passes_is_not_handed_out_by_the_next():
    kopf = KopfNodeIndex()
    index = JobIndex(OwnWrites(), nodes=kopf.index)

    def event(body: dict | None, name: str) -> None:
        kopf.event(body, name)
        index.node_event(name)

    def admitted() -> list[str]:
        job = QueuedJob("u", "a", "j", 0, NOW, gpu_type="h100")
        plan = schedule([job], index.gpu_nodes(), [], NOW, gpu_type_label=LABEL, always_tolerated=ALWAYS)
        return [a.node for a in plan.admissions]

    event(node_body("n1", gpu_type="h100"), "n1")
    assert admitted() == ["n1"]
    event(node_body("n1", gpu_type="h100", taints=(TAINTS[0],)), "n1")  # a taint the job does not tolerate
    assert admitted() == []
    event(node_body("n1", gpu_type="h100", beat=5), "n1")
    assert admitted() == ["n1"]
    event(node_body("n1", gpu_type="h100", unschedulable=True), "n1")
    assert admitted() == []
    event(node_body("n1", gpu_type="h100"), "n1")
    event(node_body("n2", gpu_type="h100", gpus=1), "n2")
    assert admitted() == ["n2"]  # the smaller node first
    event(None, "n2")
    assert admitted() == ["n1"]
    event(node_body("n1", gpu_type="a100"), "n1")
    assert admitted() == []


def test_binding_another_node_index_lists_it_at_the_next_read():
    index = JobIndex(OwnWrites(), nodes={"a": [GpuNode("a", True, True, 8)]})
    assert [n.name for n in index.gpu_nodes()] == ["a"]
    index.nodes = {"b": [GpuNode("b", True, True, 8)]}
    assert [n.name for n in index.gpu_nodes()] == ["b"]


def test_a_node_views_class_key_is_its_labels_taints_and_gpus():
    a = GpuNode("a", True, True, 8, {"zone": "x", LABEL: "h100"})
    b = GpuNode("b", False, True, 8, {LABEL: "h100", "zone": "x"})
    assert a.class_key == b.class_key and a != b
    assert GpuNode("c", True, True, 4, {"zone": "x", LABEL: "h100"}).class_key != a.class_key
    assert GpuNode("d", True, True, 8, {"zone": "y", LABEL: "h100"}).class_key != a.class_key
    tainted = gpu_node(node_body("e", gpu_type="h100", taints=(TAINTS[0],)), "nvidia.com/gpu")
    untainted = gpu_node(node_body("e", gpu_type="h100"), "nvidia.com/gpu")
    assert tainted.class_key != untainted.class_key
