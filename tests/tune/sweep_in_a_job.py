"""Run a sweep as a Ray job of its own and report what Ray still holds after it, while the job
is still connected (a placement group left behind by a stopped trial lives as long as the job).

    python sweep_in_a_job.py SWEEP.yaml BEST.yaml OUT.json   (with RAY_ADDRESS and the token set)

A separate process: Ray reads its token settings once per process, at import.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time


def main(sweep_file: str, best_file: str, out: str) -> None:
    import ray

    from ltray.tune.sweep import run_sweep
    from ltray.tune.sweep_config import load_sweep

    outcome = run_sweep(load_sweep(sweep_file), best_out=best_file)
    # Ray Train's own cleaner actors (one per run) notice a stopped run within seconds; on a
    # loaded 2-core machine their state API calls take longer (one outlived 60 s)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and trial_actors():
        time.sleep(1)
    groups = ray.util.placement_group_table()
    report = {
        "run_name": outcome.run_name,
        "complete": outcome.complete,
        "parent_run_id": outcome.parent_run_id,
        "rows": [dataclasses.asdict(row) for row in outcome.rows],
        "best": dataclasses.asdict(outcome.best) if outcome.best else None,
        "placement_groups": [g["state"] for g in groups.values()],
        "alive_actors": trial_actors(),
    }
    with open(out, "w") as f:
        json.dump(report, f)


def trial_actors() -> list[str]:
    """The classes of the live actors, but the cluster's own singletons."""
    import ray

    actors = ray._private.state.actors().values()
    alive = [a["ActorClassName"] for a in actors if a["State"] == "ALIVE"]
    return [name for name in alive if name not in CLUSTER_SINGLETONS]


# started once per cluster by Ray Train and Data, detached, shared by every run
CLUSTER_SINGLETONS = {"_AutoscalingCoordinatorActor", "TrainStateActor"}


if __name__ == "__main__":
    main(*sys.argv[1:4])
