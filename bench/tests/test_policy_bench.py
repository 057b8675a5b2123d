"""``python -m bench policy`` without a cluster: the arguments, the site
policy (50 rules that parse, deny rules that no flood item meets), the
items' facts, the merged policy document, the fairness figures (Jain's
index, the backlog window), the probe's verdicts, the tape part's layout,
data and figures (switches, the verdict, a stall's picture), the Markdown,
and what a cluster with a policy and agent tags is given."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import cli
from bench import clients as cl
from bench import code as codemod
from bench import policy as pm
from bench import tls as tlsmod
from bench.cluster import BenchCluster, ClusterOptions, merge_policy
from bench.workloads import _flood_clients
from coordinator import config as cfgmod
from coordinator.agents import agent_lease
from coordinator.policy import parse, seeded

# ------------------------------------------------------------ arguments


def test_policy_arguments_and_sizes() -> None:
    p = cli.build_parser()
    a = p.parse_args(["policy"])
    assert (a.workload, a.repeat, a.parts, a.fair_seconds, a.fair_rate, a.no_save) == ("policy", 1, None, None,
                                                                                       None, False)
    s = cli.settings_from(a)
    assert s.mode == "quick" and s.flood_actions == 20_000 and s.policy is False and s.item_facts is False
    a = p.parse_args(["policy", "--full", "--repeat", "3", "--parts", "fairness", "--fair-seconds", "20",
                      "--fair-rate", "500"])
    assert (a.repeat, a.parts, a.fair_seconds, a.fair_rate) == (3, "fairness", 20.0, 500.0)
    assert cli.settings_from(a).flood_actions == 1_000_000
    a = p.parse_args(["policy", "--parts", "tape", "--tape-volumes", "10", "--tape-files", "30", "--tape-live"])
    assert (a.parts, a.tape_volumes, a.tape_files, a.tape_live) == ("tape", 10, 30, True)
    a = p.parse_args(["policy"])
    assert (a.tape_volumes, a.tape_files, a.tape_live) == (None, None, False)


@pytest.mark.parametrize(("flags", "message"), [(["--repeat", "0"], "--repeat must be at least 1"),
                                                (["--parts", "cost,speed"], "--parts: speed"),
                                                (["--parts", ","], "--parts: nothing"),
                                                (["--fair-seconds", "0"], "--fair-seconds must be more than 0"),
                                                (["--fair-rate", "-1"], "--fair-rate must be more than 0"),
                                                (["--tape-volumes", "1"], "--tape-volumes must be at least 2"),
                                                (["--tape-files", "0"], "--tape-files must be at least 1")])
def test_bad_arguments_are_usage_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["policy", *flags, "--no-save", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no cluster was started


def test_policy_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "policy         what the policy costs" in out and "0.9" in out and "0.95" in out
    with pytest.raises(SystemExit):
        cli.main(["policy", "--help"])
    out = capsys.readouterr().out
    assert "--fair-seconds" in out and "--parts" in out and "Jain" in out and "50-rule" in out
    assert "--tape-files" in out and "--tape-live" in out and "volume switches" in out.lower() and "0.1" in out


def test_parts_and_order() -> None:
    assert pm.parse_parts(None) == ("cost", "fairness", "tape")
    assert pm.parse_parts("fairness, cost") == ("cost", "fairness") and pm.parse_parts("tape,cost") == ("cost", "tape")
    assert pm.parse_parts("cost") == ("cost",) and pm.parse_parts("tape") == ("tape",)
    with pytest.raises(ValueError):
        pm.parse_parts("cost,nope")
    assert pm.order(0) == ("off", "on") and pm.order(1) == ("on", "off") and pm.order(2) == ("off", "on")
    assert pm.order(1, pm.SHARE_MODES) == ("user", "none")
    assert pm.order(0, pm.TAPE_MODES) == ("fifo", "policy") and pm.order(1, pm.TAPE_MODES) == ("policy", "fifo")


# ------------------------------------------------------------ the site policy


def test_the_site_policy_has_50_rules_that_parse() -> None:
    rules = pm.site_rules()
    assert len(rules) == pm.RULES == 50
    cats = {c: sum(1 for k, _ in rules if k == c) for c in ("id", "path", "size", "kind")}
    assert cats == {"id": 20, "path": 15, "size": 10, "kind": 5}
    names = [r["name"] for _, r in rules]
    assert len(set(names)) == 50
    pol = parse(pm.rules_yaml())
    assert [r.name for r in pol.rules] == names
    assert not any(r.archive_id for r in pol.rules)  # no archive id the bench cluster lacks
    assert any("**" in g for r in pol.rules for g in r.paths)
    assert pm.routing_tags() == ("disk", "tape-y", "tape-x", "tape-x-fast")
    assert sum(1 for r in pol.rules if r.deny) == 5 and not any(r.allow for r in pol.rules)
    rec = pm.policy_record(pm.rules_yaml())
    assert rec["rules"] == 50 and rec["rules_sha256"] == pm.digest(pm.rules_yaml()) and len(rec["deny_rules"]) == 5


def test_no_item_of_the_flood_is_refused_but_the_deny_rules_are_live() -> None:
    pol = parse(pm.rules_yaml())
    n, clients = 20_000, 4
    for oid in range(1, n + 1):
        path, size, uid, gid = cl.item_facts(oid)
        d = pol.admit(pm.KIND_ARCHIVE, 1, path, size, uid, gid, 0, pm.flood_initiator(oid, n, clients))
        assert not d.deny and d.priority is not None and d.tag in pm.routing_tags()
    refused = [("/scratch/a/b", 10, 1000), ("/project/p01/tmp/x", 10, 1000), ("/project/p01/u1000/core.123", 10, 1000),
               ("/project/p01/u1000/big", 2**41, 1000), ("/project/p01/u0/x", 10, 0)]
    for path, size, uid in refused:
        assert pol.admit(pm.KIND_ARCHIVE, 1, path, size, uid, 100, 0, "bench0").deny, path
    eff = pm.expected_effects(2000, 4)
    assert eff["items_evaluated"] == 2000 and eff["denied"] == 0 and eff["tagged_pct"] == 100.0
    assert eff["mean_rules_matched"] is not None and eff["mean_rules_matched"] > 3
    assert pm.expected_effects(1_000_000, 4, most=1000)["items_evaluated"] == 1000


def test_flood_initiators_follow_the_flood_clients() -> None:
    c = SimpleNamespace(client_params=dict, addresses="a:1")
    for n, clients in ((10, 4), (2000, 3), (3, 4), (20_000, 4)):
        s = SimpleNamespace(clients=clients, batch=1000, inflight=2, samples=0, item_facts=True)
        for p in _flood_clients(s, c, n, cl.SEQ_FLOOD):  # type: ignore[arg-type]
            assert p["facts"] is True
            for oid in (p["oid0"], p["oid0"] + p["count"] - 1):
                assert pm.flood_initiator(oid, n, clients) == p["initiator"]
    s = SimpleNamespace(clients=2, batch=1000, inflight=2, samples=0, item_facts=False)
    assert all("facts" not in p for p in _flood_clients(s, c, 10, cl.SEQ_FLOOD))  # type: ignore[arg-type]


# ------------------------------------------------------------ the items' facts


def test_item_facts_are_a_pure_function_of_the_oid() -> None:
    assert cl.item_facts(1) == ("/project/p12/u1005/run2/file1.tar", 9725279, 1005, 100)  # pinned: no drift
    facts = [cl.item_facts(oid) for oid in range(1, 10_001)]
    assert facts == [cl.item_facts(oid) for oid in range(1, 10_001)]
    shape = re.compile(r"/project/p\d\d/u10[01]\d/run[0-7]/file(\d+)\.(dat|h5|nc|tar|log)\Z")
    for oid, (path, size, uid, gid) in enumerate(facts, 1):
        m = shape.match(path)
        assert m and int(m.group(1)) == oid and f"/u{uid}/" in path
        assert cl.FACT_SIZE_MIN <= size < cl.FACT_SIZE_MAX and uid in cl.FACT_UIDS and gid == 100 + uid % 5
    assert {f[2] for f in facts} == set(cl.FACT_UIDS)
    assert len({f[0].split("/")[2] for f in facts}) == 50
    sizes = [f[1] for f in facts]
    assert min(sizes) < 4096 and max(sizes) > 2**33  # 1 KiB .. 10 GiB, both ends reached


def test_items_carry_their_facts_only_when_asked() -> None:
    p = {"count": 3, "oid0": 7, "seq": cl.SEQ_FLOOD, "kind": "archive", "initiator": "bench0", "cookie0": 7}
    plain = cl._items(p)
    assert [(i.path, i.HasField("size"), i.requester.uid) for i in plain] == [("", False, 0)] * 3
    rich = cl._items({**p, "facts": True})
    for item in rich:
        path, size, uid, gid = cl.item_facts(item.fid.oid)
        assert (item.path, item.size, item.requester.uid, item.requester.gid) == (path, size, uid, gid)
        assert item.requester.initiator == "bench0"


def test_items_carry_the_data_asked() -> None:
    p = {"count": 3, "oid0": 1, "seq": pm.SEQ_TAPE, "kind": "restore", "initiator": "tape", "cookie0": 1,
         "data": ["volume=V00,position=5", "volume=V01,position=0", "vol=V02,pos=9"]}
    items = cl._items(p)
    assert [i.data for i in items] == [b"volume=V00,position=5", b"volume=V01,position=0", b"vol=V02,pos=9"]
    assert [i.fid.oid for i in items] == [1, 2, 3] and not any(i.HasField("hsm") for i in items)
    assert [i.data for i in cl._items({**p, "data": None})] == [b""] * 3
    with pytest.raises(ValueError, match="2 data strings for 3 items"):
        cl._items({**p, "data": p["data"][:2]})


# ------------------------------------------------------------ the policy document


def _seeded_text() -> str:
    return seeded(3, 600.0, 30.0, 163_500, frozenset({"restore"})).text


def test_merge_keeps_the_first_policy_and_adds_the_sections() -> None:
    first = parse(_seeded_text())
    merged = parse(merge_policy(_seeded_text(), pm.rules_yaml()))
    assert merged == dataclasses.replace(first, rules=parse(pm.rules_yaml()).rules)
    assert merged.settings.max_terminal == 163_500 and merged.settings.agent_grace == 30.0
    fair = parse(merge_policy(_seeded_text(), pm.fair_sections("user")))
    assert fair.share_by == "user" and dataclasses.replace(fair, share_by="none") == first
    assert parse(merge_policy(_seeded_text(), pm.fair_sections("none"))) == first
    with pytest.raises(ValueError):
        merge_policy(_seeded_text(), "- a list")


def test_the_bench_agent_grace_is_one_a_policy_may_set(tmp_path: Path) -> None:
    # SetPolicy refuses an agent_grace too short for the agents' leases: the bench's usual 30 s is, on
    # the bench cluster's timings; the policy benchmark's is not
    c = BenchCluster(tmp_path / "c", ClusterOptions(shards=2, agent_grace=pm.AGENT_GRACE))
    c._write_config()
    cfg, _ = cfgmod.load(c.config_path, {"replica_id": "r1"})
    assert cfg.agent_grace == pm.AGENT_GRACE
    assert agent_lease(pm.AGENT_GRACE, cfg.heartbeat_interval, cfg.raft.leader_fallback)[1] is True
    assert agent_lease(30.0, cfg.heartbeat_interval, cfg.raft.leader_fallback)[1] is False


class _FakeClient:
    texts: list[str] = []

    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_policy(self) -> Any:
        return SimpleNamespace(text=_seeded_text(), version=1)

    def set_policy(self, text: str) -> Any:
        self.texts.append(text)
        return SimpleNamespace(text=text, version=2)


def test_a_cluster_with_a_policy_sets_it_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hsm.client

    monkeypatch.setattr(hsm.client, "CoordinatorClient", _FakeClient)
    c = BenchCluster(tmp_path / "c", ClusterOptions(shards=2, policy=pm.rules_yaml()))
    c._write_config()
    assert c.set_policy(c.opt.policy) == 2 and c.policy_version == 2
    assert c.policy_text == _FakeClient.texts[-1] and len(parse(c.policy_text).rules) == 50
    assert c.opt.describe()["policy"]["sha256"] == pm.digest(pm.rules_yaml())
    assert "policy" not in ClusterOptions().describe() and "agent_tags" not in ClusterOptions().describe()


def test_agents_serve_the_tags_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(shards=2, agent_tags="disk,tape-x"))
    c._write_config()
    spawned: dict[str, list[str]] = {}
    monkeypatch.setattr(c, "_spawn", lambda name, cmd: spawned.setdefault(name, cmd))
    c.start_agent("agent1")
    cmd = spawned["agent1"]
    assert cmd[cmd.index("--tags") + 1] == "disk,tape-x" and c.opt.describe()["agent_tags"] == "disk,tape-x"
    plain = BenchCluster(tmp_path / "p", ClusterOptions(shards=2))
    plain._write_config()
    monkeypatch.setattr(plain, "_spawn", lambda name, cmd: spawned.__setitem__(name, cmd))
    plain.start_agent("agent1")
    assert "--tags" not in spawned["agent1"]


def test_a_code_tree_cluster_refuses_a_policy(tmp_path: Path) -> None:
    tree = codemod.CodeTree("baseline", "x", "f" * 40, tmp_path / "tree")
    c = BenchCluster(tmp_path / "c", ClusterOptions(code=tree, policy="fair_share: {by: user}\n"))
    with pytest.raises(ValueError, match="keeps the policy"):
        c._write_config()


def test_settings_carry_the_policy_to_the_cluster_options() -> None:
    s = cli.settings_from(cli.build_parser().parse_args(["policy"]))
    assert s.cluster_options().policy == "" and s.cluster_options().agent_grace == 30.0
    s.policy_text, s.agent_tags, s.agent_grace = "rules: []\n", "disk", 60.0
    opt = s.cluster_options()
    assert opt.policy == "" and opt.agent_tags == "disk" and opt.agent_grace == 60.0  # policy off: not set
    s.policy = True
    assert s.cluster_options(replicas=1).policy == "rules: []\n"
    assert s.cluster_options(policy="fair_share: {by: none}\n").policy == "fair_share: {by: none}\n"


# ------------------------------------------------------------ fairness figures


def test_jain() -> None:
    assert pm.jain([5.0, 5.0]) == 1.0 and pm.jain([10.0, 1.0]) == round(121 / 202, 4)
    assert pm.jain([1.0, 0.0]) == 0.5 and pm.jain([]) is None and pm.jain([0.0, 0.0]) is None
    assert pm.jain([1.0, 2.0, 3.0]) == round(36 / 42, 4)


def _acts(uid: int, created: float, starts: list[float], unstarted: int = 0) -> list[tuple[int, float, float]]:
    return [(uid, created, s) for s in starts] + [(uid, created, 0.0)] * unstarted


def test_the_window_closes_when_a_user_runs_out() -> None:
    acts = _acts(1, 0.0, [2.0, 3.0, 4.0], unstarted=5) + _acts(2, 0.5, [1.5, 2.5, 5.0])
    assert pm.backlog_window(acts, [1, 2], 1.0, 10.0) == (1.0, 5.0, "uid 2 had nothing waiting")
    # nobody waits at t_from: the window opens when both first do
    assert pm.backlog_window(acts, [1, 2], 0.0, 10.0) == (0.5, 5.0, "uid 2 had nothing waiting")
    # the submission ends first
    assert pm.backlog_window(acts, [1, 2], 1.0, 4.5) == (1.0, 4.5, "the submission ended")
    # never both waiting before the end
    assert pm.backlog_window(_acts(1, 0.0, [], 3) + _acts(2, 6.0, [7.0]), [1, 2], 0.0, 5.0) is None
    assert pm.backlog_window(_acts(1, 0.0, [], 3), [1, 2], 0.0, 5.0) is None
    # a creation and a start at the same moment: the creation counts first (no spurious gap)
    acts = _acts(1, 0.0, [], 3) + [(2, 0.0, 2.0), (2, 2.0, 3.0)]
    assert pm.backlog_window(acts, [1, 2], 0.0, 10.0) == (0.0, 3.0, "uid 2 had nothing waiting")
    # other users do not count
    assert pm.backlog_window(acts + _acts(9, 0.0, [0.1]), [1, 2], 0.0, 10.0) == (0.0, 3.0, "uid 2 had nothing waiting")


def test_fairness_figures_fair_and_unfair() -> None:
    def scenario(per_second: tuple[int, int]) -> list[tuple[int, float, float]]:
        acts = []
        for u, k in zip((1001, 1002), per_second, strict=True):
            acts += [(u, 0.0, 1.0 + (i + 0.5) / k) for i in range(10 * k)]  # k a second over [1, 11)
            acts += [(u, 0.0, 0.0)] * 5  # a backlog left at the end
        return acts

    fair = pm.fairness_figures(scenario((20, 20)), [1001, 1002], 1.0, 11.0, t0=0.0)
    assert fair["window"] == [1.0, 11.0] and fair["window_closed_by"] == "the submission ended"
    assert fair["rates"] == {"1001": 20.0, "1002": 20.0} and fair["jain"] == 1.0
    assert fair["second_user_share"] == 0.5 and fair["total_rate"] == 40.0
    assert fair["waiting_at_window_end"] == {"1001": 5, "1002": 5}
    unfair = pm.fairness_figures(scenario((30, 3)), [1001, 1002], 1.0, 11.0)
    assert unfair["rates"] == {"1001": 30.0, "1002": 3.0} and unfair["jain"] == round(33**2 / (2 * (900 + 9)), 4)
    assert unfair["second_user_share"] == round(3 / 33, 4)
    none = pm.fairness_figures(_acts(1001, 0.0, [1.0]), [1001, 1002], 0.0, 5.0)
    assert none["jain"] is None and none["window"] is None and none["created"] == {"1001": 1, "1002": 0}


def test_the_default_rate_keeps_both_users_backlogged() -> None:
    assert pm.drain_capacity(2) == 40.0 and pm.fair_rate(2) == 330.0
    second = pm.fair_rate(2) / (pm.FAIR_SPLIT + 1)
    assert second > pm.drain_capacity(2) / 2  # over its fair share: it keeps a backlog with fair share on
    assert parse(pm.fair_sections("user")).share_by == "user"


def test_fairness_medians_and_verdict() -> None:
    runs = [{"jain": 0.99, "second_user_share": 0.49, "window_seconds": 20.0, "total_rate": 39.0,
             "rates": {"1001": 20.0, "1002": 19.0}},
            {"jain": 0.97, "second_user_share": 0.45, "window_seconds": 22.0, "total_rate": 38.0,
             "rates": {"1001": 21.0, "1002": 17.0}}]
    m = pm.fairness_medians(runs)
    assert m["jain"] == 0.98 and m["rates"] == {"1001": 20.5, "1002": 18.0} and m["runs"] == 2
    assert pm.fairness_medians([])["jain"] is None
    v = pm.fairness_verdict(m, {"jain": 0.6})
    assert (v["status"], v["target"], v["baseline_jain"], v["jain_over_baseline"]) == ("met", 0.95, 0.6, 1.633)
    assert pm.fairness_verdict({"jain": 0.9}, {"jain": None})["status"] == "missed"
    assert pm.fairness_verdict({}, {})["status"] == "not measured"


# ------------------------------------------------------------ the probe


def test_data_tag() -> None:
    assert pm.data_tag(b"a=1,tag=tape-x") == "tape-x" and pm.data_tag(b"") == "" and pm.data_tag(b"tags=x") == ""


def test_policy_problem() -> None:
    ok = {"r1": {"version": 2, "text": "T", "shards": {0: 2, 1: 2}}, "r2": {"version": 2, "text": "T",
                                                                         "shards": {0: 2, 1: 2}}}
    assert pm.policy_problem(ok, 2, 2, "T") is None and pm.policy_problem(ok, 2, 2, None) is None
    assert pm.policy_problem({}, 2, 2, "T") == "no replica answered GetPolicy"
    assert "version 2, not 1" in (pm.policy_problem(ok, 2, 1, None) or "")
    assert "text is not" in (pm.policy_problem(ok, 2, 2, "U") or "")
    lag = {**ok, "r2": {"version": 2, "text": "T", "shards": {0: 2, 1: 1}}}
    assert "r2: shards at other versions {1: 1}" == pm.policy_problem(lag, 2, 2, "T")
    assert "reports 2 shards, not 3" in (pm.policy_problem(ok, 3, 2, "T") or "")


def _probe(on: bool, **state: Any) -> pm.CostProbe:
    text = merge_policy(_seeded_text(), pm.rules_yaml()) if on else None
    cluster = SimpleNamespace(opt=SimpleNamespace(policy=pm.rules_yaml() if on else "", shards=2),
                              policy_text=text, policy_version=2 if on else None)
    p = pm.CostProbe(cluster)  # type: ignore[arg-type]
    version, t = (2, text) if on else (1, _seeded_text())
    p.answers = {r: {"version": version, "text": t, "shards": {0: version, 1: version}} for r in ("r1", "r2")}
    p.rules, p.sampled, p.prioritized, p.ran = (50 if on else 0), 500, (500 if on else 0), True
    for k, v in state.items():
        setattr(p, k, v)
    return p


def test_probe_verdicts() -> None:
    assert _probe(True).problem() is None and _probe(False).problem() is None
    assert _probe(True, ran=False).problem() == "the mode probe did not run"
    assert "not 50" in (_probe(True, rules=49).problem() or "")
    assert "version 2, not 1" in (_probe(False, answers={"r1": {"version": 2, "text": "", "shards": {0: 2, 1: 2}}})
                                  .problem() or "")
    assert "has 3 rules" in (_probe(False, rules=3).problem() or "")
    assert "given a priority" in (_probe(True, prioritized=0).problem() or "")
    assert "lack their item's uid" in (_probe(True, wrong_uid=4).problem() or "")
    assert "another priority" in (_probe(True, wrong_priority=[[1, 2, 3, 4]]).problem() or "")
    assert "another tag" in (_probe(True, wrong_tag=[[1, 2, "", "disk"]]).problem() or "")
    assert "no action to sample" == _probe(False, sampled=0).problem()
    rec = _probe(True).record()
    assert rec["policy"] is True and rec["version_set"] == 2 and rec["replicas"]["r1"]["shard_versions"] == [2]


# ------------------------------------------------------------ tape


def test_the_tape_layout_is_fixed_and_shuffled() -> None:
    lay = pm.tape_layout(20, 50)
    assert lay == pm.tape_layout(20, 50) and lay != pm.tape_layout(20, 50, seed=17)
    assert lay[:3] == [("V09", 3844), ("V17", 3667), ("V14", 1877)]  # pinned: both runs, every version, see this
    assert len(lay) == 1000 and len(set(lay)) == 1000
    per: dict[str, list[int]] = {}
    for v, pos in lay:
        per.setdefault(v, []).append(pos)
    assert sorted(per) == [f"V{i:02d}" for i in range(20)]
    assert all(len(ps) == 50 and len(set(ps)) == 50 and 0 <= min(ps) and max(ps) < 50 * pm.TAPE_SPAN
               for ps in per.values())
    assert pm.switches([v for v, _ in lay]) > 900  # shuffled: arrival order jumps between volumes
    assert any(ps != sorted(ps) for ps in per.values())  # positions arrive out of order too
    assert pm.tape_layout(120, 2)[0][0].startswith("V") and len(pm.tape_layout(120, 2)[0][0]) == 4
    with pytest.raises(ValueError):
        pm.tape_layout(0, 5)


def test_tape_data_is_read_only_under_the_policy_keys() -> None:
    from coordinator.state import hints

    assert pm.tape_data("V07", 123, "policy") == "volume=V07,position=123"
    assert pm.tape_data("V07", 123, "fifo") == "vol=V07,pos=123"
    assert hints(pm.tape_data("V07", 123, "policy").encode()) == ("", "V07", 123)
    assert hints(pm.tape_data("V07", 123, "fifo").encode()) == ("", "", 0)  # the coordinator sees no volume
    with pytest.raises(ValueError):
        pm.tape_data("V07", 1, "lifo")
    assert pm.data_matches(b"volume=V07,position=123", "V07", 123, "policy")
    assert pm.data_matches(b"vol=V07,pos=123", "V07", 123, "fifo")
    assert not pm.data_matches(b"vol=V07,pos=123", "V07", 123, "policy")
    assert not pm.data_matches(b"volume=V07,position=123", "V07", 123, "fifo")
    assert not pm.data_matches(b"volume=V07,position=12", "V07", 123, "policy")
    assert pm.data_fields(b"vol=V07,pos=1,x") == {"vol": "V07", "pos": "1"}


def test_switches_and_sequences() -> None:
    assert pm.switches([]) == 0 and pm.switches(["a"]) == 0 and pm.switches(["a", "a", "b", "a", "a"]) == 2
    rows = [("agent2", 1.0, "V01", 5), ("agent1", 2.0, "V00", 3), ("agent1", 1.0, "V02", 9),
            ("agent1", 2.0, "V00", 1), ("agent1", 1.0, "V00", 7)]
    # by start; restores handed over together (2.0): volume, then position order
    assert pm.agent_sequences(rows) == {"agent1": [("V00", 7), ("V02", 9), ("V00", 1), ("V00", 3)],
                                        "agent2": [("V01", 5)]}


def test_sequence_figures() -> None:
    seqs = {"agent1": [("V00", 1), ("V00", 5), ("V00", 3), ("V01", 0), ("V00", 9), ("V00", 10)],
            "agent2": [("V02", 1), ("V02", 2), ("V01", 4)], "agent3": []}
    f = pm.sequence_figures(seqs)
    assert (f["restores"], f["switches"], f["fewest_switches"], f["mounts"], f["remounts"]) == (9, 3, 2, 5, 1)
    assert f["volumes"] == 3 and f["volumes_on_several_agents"] == ["V01"]
    # same-volume steps: agent1 1->5 (fwd), 5->3, 9->10 (fwd); agent2 1->2 (fwd)
    assert f["forward_share"] == 0.75
    a1 = f["per_agent"]["agent1"]
    assert (a1["switches"], a1["volumes"], a1["mounts"], a1["remounts"], a1["same_volume_pairs"],
            a1["forward_pairs"]) == (2, 2, 3, 1, 3, 2)
    assert f["per_agent"]["agent3"] == {"restores": 0, "switches": 0, "volumes": 0, "fewest_switches": 0,
                                        "mounts": 0, "remounts": 0, "same_volume_pairs": 0, "forward_pairs": 0}
    assert pm.sequence_figures({})["forward_share"] is None


def test_mounts_and_replica_figures() -> None:
    seq = [("V00", 1), ("V00", 2), ("V01", 0), ("V00", 3)]
    assert pm.mount_runs(seq) == [["V00", 2], ["V01", 1], ["V00", 1]]
    assert pm.mount_runs(seq, most=2) == [["V00", 2], ["V01", 1]] and pm.mount_runs([]) == []
    # agent1: r1 hands V00, V00, V05; r2 hands V12, V12: merged V00 V12 V00 V12 V05 (4 switches, all between
    # the two replicas' hand-outs); each replica alone switches once (r1) or never (r2)
    rows = [("agent1", 1.0, "V00", 1, "r1"), ("agent1", 2.0, "V12", 1, "r2"), ("agent1", 3.0, "V00", 2, "r1"),
            ("agent1", 4.0, "V12", 2, "r2"), ("agent1", 5.0, "V05", 1, "r1"), ("agent2", 1.0, "V03", 1, "r1"),
            ("agent2", 2.0, "V04", 1, "r1")]
    assert pm.replica_figures(rows) == {"switches_between_replicas": 4, "switches_within_each_replica": 2}
    assert pm.sequence_figures(pm.agent_sequences(r[:4] for r in rows))["switches"] == 5


def test_forward_within_shard() -> None:
    # agent1: V00 from shard 0 at 1, 5; from shard 1 at 3 in between; then V01
    rows = [("agent1", 1.0, "V00", 1, 0), ("agent1", 2.0, "V00", 5, 0), ("agent1", 3.0, "V00", 3, 1),
            ("agent1", 4.0, "V00", 6, 1), ("agent1", 5.0, "V01", 9, 1), ("agent2", 1.0, "V02", 4, 2),
            ("agent2", 2.0, "V02", 2, 2)]
    # one-shard pairs: 1->5 (fwd), 3->6 (fwd), 4->2 (back); 5->3 is across shards, 6->9 across volumes
    assert pm.forward_within_shard(rows) == round(2 / 3, 4)
    assert pm.forward_within_shard([]) is None


def test_fifo_expected_switches() -> None:
    lay = pm.tape_layout(20, 50)
    assert pm.fifo_expected_switches(lay, 2) == round(0.95 * 998, 1)
    assert pm.fifo_expected_switches([("V00", 1)] * 10, 2) == 0.0 and pm.fifo_expected_switches([], 2) == 0.0


def test_tape_verdict_and_medians() -> None:
    v = pm.tape_verdict(20, 950)
    assert (v["ratio"], v["status"], v["target"]) == (round(20 / 950, 4), "met", 0.1)
    assert pm.tape_verdict(95, 950)["status"] == "met"  # at most 0.1
    assert pm.tape_verdict(96, 950)["status"] == "missed"
    assert pm.tape_verdict(None, 950)["status"] == "not measured"
    assert pm.tape_verdict(10, 0)["status"] == "not measured" and pm.tape_verdict(10, None)["ratio"] is None
    m = pm.tape_medians([{"switches": 20, "forward_share": 0.9, "drain_seconds": 5.0},
                         {"switches": 24, "forward_share": 0.8, "drain_seconds": 7.0}])
    assert (m["switches"], m["forward_share"], m["drain_seconds"], m["runs"]) == (22.0, 0.85, 6.0, 2)
    assert pm.tape_medians([])["switches"] is None


def test_stall_picture() -> None:
    acts = [("agent1", "r1", "V05", 3.5, False), ("agent1", "r1", "V00", 3.4, False),
            ("agent1", "r2", "V12", 6.3, False), ("agent1", "r3", "V12", 5.3, False),
            ("", "r2", "V05", 0.0, True), ("", "r3", "V05", 0.0, True), ("", "r2", "V05", 0.0, True),
            ("", "r1", "V12", 0.0, True)]
    pic = pm.stall_picture(acts)
    assert pic["waiting"] == {"V05": {"r2": 2, "r3": 1}, "V12": {"r1": 1}}
    assert pic["last_handed"] == {"agent1": {"r1": "V05", "r2": "V12", "r3": "V12"}}


class _StuckCluster:
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def check_alive(self) -> None:
        pass

    def pending(self) -> int:
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def test_drain_or_stall() -> None:
    _, why = pm.drain_or_stall(_StuckCluster([5, 3, 0]), timeout=10, stall=5, interval=0.0)  # type: ignore[arg-type]
    assert why is None
    _, why = pm.drain_or_stall(_StuckCluster([5, 3]), timeout=10, stall=0.05, interval=0.01)  # type: ignore[arg-type]
    assert why == "stalled: 3 restores waiting or running, none ended for 0.05 s"
    _, why = pm.drain_or_stall(_StuckCluster([3]), timeout=0.0, stall=5, interval=0.0)  # type: ignore[arg-type]
    assert why is not None and why.startswith("not drained")


# ------------------------------------------------------------ output


def _flood(rate: float, total_us: float) -> dict[str, Any]:
    return {"actions": 1000, "actions_per_s": rate, "seconds": 1000 / rate, "p99_start_ms": 50.0,
            "cpu": {"other_s": 1.0, "host_capacity_s": 10.0},
            "cpu_per_action": {"total_us_per_action": total_us, "harness_us_per_action": 4.0,
                               "classes": {"leader": {"us_per_action": total_us - 50},
                                           "agentd": {"us_per_action": 30.0}, "client": {"us_per_action": 20.0}},
                               "replicas": {"r1": {"us_per_action": 80.0}}}}


def test_markdown() -> None:
    on, off = tlsmod.medians([_flood(4600.0, 320.0)]), tlsmod.medians([_flood(5000.0, 300.0)])
    fair_user = {"jain": 0.998, "second_user_share": 0.49, "window_seconds": 25.0, "total_rate": 39.0,
                 "rates": {"1001": 19.8, "1002": 19.2}, "runs": 1}
    fair_none = {"jain": 0.6, "second_user_share": 0.09, "window_seconds": 25.0, "total_rate": 39.0,
                 "rates": {"1001": 35.5, "1002": 3.5}, "runs": 1}
    rules = pm.rules_yaml()
    out = {"mode": "quick", "when": "now", "wall_seconds": 100.0, "rounds": 1,
           "machine": {"cores": 2, "versions": {"grpcio": "1.2.3"}},
           "cluster": {"replicas": 3, "shards": 8, "agents": 2, "clients": 4, "batch": 1000, "inflight": 2,
                       "agent_grace": 60.0},
           "policy": {**pm.policy_record(rules), "expected_effects": pm.expected_effects(500, 4)},
           "cost": {"actions": 20_000, "flood": {"on": on, "off": off},
                    "verdict": tlsmod.verdict(on, off, [0.92], target=pm.TARGET),
                    "timeline": [{"round": 1, "policy": "off", "position": 1, "actions_per_s": 5000.0,
                                  "sampled": 500, "sampled_prioritized": 0,
                                  "sampled_per_agent": {"agent1": 260, "agent2": 240}, "wall_seconds": 9.0},
                                 {"round": 1, "policy": "on", "position": 2, "wall_seconds": 3.0}]},
           "fairness": {"target": pm.FAIR_TARGET, "seconds": 30.0, "rate": 330.0, "split": 10,
                        "users": [1001, 1002], "slots": pm.FAIR_SLOTS, "null_delay": 0.2, "hold": 2.0,
                        "settle": 1.0, "drain_capacity": 40.0, "medians": {"user": fair_user, "none": fair_none},
                        "verdict": pm.fairness_verdict(fair_user, fair_none),
                        "timeline": [{"round": 1, "share_by": "none", "position": 1, "jain": 0.6,
                                      "window_seconds": 25.0, "window_closed_by": "the submission ended",
                                      "wall_seconds": 40.0}]},
           "tape": {"target": pm.TAPE_TARGET, "volumes": 20, "files_per_volume": 50, "restores": 1000, "seed": 16,
                    "slots": pm.TAPE_SLOTS, "null_delay": 0.02, "batch": 100, "dispatch_held": True,
                    "fifo_expected_switches": 948.1,
                    "medians": {"fifo": {"switches": 950, "fewest_switches": 38, "remounts": 912,
                                         "forward_share": 0.5, "drain_seconds": 8.0, "restores_per_s": 125.0,
                                         "runs": 1},
                                "policy": {"switches": 19, "fewest_switches": 18, "remounts": 1,
                                           "switches_between_replicas": 1, "forward_share_within_shard": 1.0,
                                           "forward_share": 0.72, "drain_seconds": 9.5, "restores_per_s": 105.3,
                                           "runs": 1}},
                    "verdict": pm.tape_verdict(19, 950),
                    "timeline": [{"round": 1, "mode": "fifo", "position": 1, "switches": 950, "remounts": 912,
                                  "forward_share": 0.5, "drain_seconds": 8.0, "wall_seconds": 20.0}]},
           "failures": {"policy on (round 1)": "RuntimeError: boom"}, "invariant_breaks": []}
    md = pm.markdown(out)
    assert "**policy on / off: 0.920** (target ≥ 0.9: **met**)." in md
    assert "| actions/s end to end | 4,600.0 | 5,000.0 | 0.920 |" in md
    assert "20 id, 5 kind, 15 path, 10 size rules" in md and "`deny-scratch`" in md
    assert "| 1 | off | first | 5,000.0 |" in md and "| 0 of 500 | agent1 260, agent2 240 | 9.0 |" in md
    assert "| 1 | on | second | n/a |" in md
    assert "**Jain's index with fair share by user: 0.998** (target ≥ 0.95: **met**); by none (the baseline): " \
           "0.600; ratio 1.663." in md
    assert "| user | 0.998 | 19.8 | 19.2 | 0.490 | 25.0 | 1 |" in md and "| none | 0.600 | 35.5 | 3.5 |" in md
    assert "| 1 | none | first | 0.600 | 25.0 | the submission ended | 40.0 |" in md
    assert "**Failures:** policy on (round 1): RuntimeError: boom" in md
    assert "agent_grace 60 s" in md
    assert "**Volume switches, policy / fifo: 0.0200** (target ≤ 0.1: **met**); policy 19, fifo 950 " \
           "(arrival order: about 948 expected)." in md
    assert "| policy | 19 | 18 | 1 | 1 | 0.720 (1.000) | 9.5 | 105.3 | 1 |" in md
    assert "| fifo | 950 | 38 | 912 | n/a | 0.500 (n/a) |" in md
    assert "| 1 | fifo | first | 950 | 912 | 0.500 | 8.0 | 20.0 |" in md and "dispatch held" in md
    only_fair = {k: v for k, v in out.items() if k not in ("cost", "tape")}
    assert "## Cost" not in pm.markdown(only_fair) and "## Fairness" in pm.markdown(only_fair)
    assert "## Tape" not in pm.markdown(only_fair)
