"""Benchmark harness of hsm-coordinator (issue 6).

``python -m bench --help`` lists the workloads; ``make bench`` runs them all
in quick mode, ``make bench-full`` at the sizes of the issue. Each run
starts real processes (coordinator replicas, agentd with the ``null`` mover,
client processes), writes ``bench/results/runs/<time>-<workload>.json``,
merges its figures into ``bench/results/latest.json`` and renders
``bench/results/latest.md`` (each figure beside its target).
"""
