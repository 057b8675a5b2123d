"""Jepsen-style fault testing of a whole cluster (issue 14).

3 replicas, 2 agents and the clients run as real processes in network
namespaces (tests/netns.py); a seeded nemesis kills, pauses, partitions
and starves them while a workload archives, restores, removes and
cancels, and a checker asks after every fault whether the cluster kept its
promises: every acknowledged request ends in exactly one terminal state,
no action runs on two agents at once, no archive object is torn, the
replicas agree, the cluster recovers within a bound.

``make nemesis CYCLES=N [SEED=S]`` or ``python -m tests.nemesis --cycles N
[--seed S] [--run-dir D] [--report PATH]``; ``tests/test_nemesis.py`` is
the short seeded run CI does.

Modules: ``net`` (the namespaces, one-way loss), ``rig`` (the processes),
``faults`` (one class per fault kind), ``workload`` and ``probe`` (run
inside the client's namespace), ``runner`` (the cycles, the measurements),
``checker`` and ``history`` (the rules, pure), ``report``.

The records a run leaves in its directory, the interface between the rig
and the checker:

``acks.jsonl``
    one line per acknowledged request: ``{"t", "client", "op":
    archive|restore|remove|cancel, "key", "fid", "path", "action_id" (0
    when none: NOT_NEEDED, REJECTED, a cancel), "outcome" (CREATED,
    JOINED, NOT_NEEDED, REJECTED; CANCEL_DONE, CANCEL_SENT,
    ALREADY_ENDED, NOT_FOUND), "target" (the action a cancel named, else
    0)}``; a request given up when the run stopped: ``{..., "gave_up":
    true}`` without outcome.
``files.jsonl``
    one line per file, before any request about it: ``{"t", "fid",
    "path", "size", "sha256"}``. Files are never written again.
``logs/<name>.log``
    every process's output; the agents' run lines are the movers' record.
``snapshots/<cycle>.json``
    after each cycle's settle: the fault, every action, each replica's
    per-shard (applied index, digest), recovery and unavailability.
``probe.jsonl``, ``events.jsonl``, ``report.json``, ``report.md``.
"""
