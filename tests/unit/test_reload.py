"""Reload as a pure diff (`xmppgw.net.reload.diff`): two plain configs in, a plan out.

What a reload adds, removes and changes; which operator overrides the new file takes back
(only a setting the file itself changes); whether the probes and the SRV publisher must
(re)start; the summary `xmppgw reload` prints.
"""

from __future__ import annotations

from xmppgw import config
from xmppgw.net.reload import ReloadPlan, diff

BASE = """
[gateway]
domains = ["example.test"]

[[vserver]]
name = "P5222"
virtual = "127.0.0.1:5222"
serverfarm = "XMPP"

[[vserver]]
name = "P5269"
virtual = "127.0.0.1:5269"
serverfarm = "XMPP"
kinds = ["s2s"]

[[serverfarm]]
name = "XMPP"
[[serverfarm.real]]
address = "127.0.2.1"
[[serverfarm.real]]
address = "127.0.2.2"
[[serverfarm.real]]
address = "127.0.2.3"
"""


def load(text: str) -> config.Config:
    return config.loads(text, "test.toml")


def edited(*replacements: tuple[str, str]) -> config.Config:
    text = BASE
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return load(text)


def test_the_same_config_changes_nothing() -> None:
    assert diff(load(BASE), load(BASE)) == ReloadPlan()
    assert ReloadPlan().summary() == {"reals_added": [], "reals_removed": [],
                                      "vservers_added": [], "vservers_removed": []}


def test_a_real_added_and_one_removed() -> None:
    new = edited(('address = "127.0.2.3"', 'address = "127.0.2.4"'))
    plan = diff(load(BASE), new)
    assert plan.reals_added == (("XMPP", "127.0.2.4"),)
    assert plan.reals_removed == (("XMPP", "127.0.2.3"),)
    assert plan.farms_changed == ("XMPP",)
    assert plan.farms_added == plan.farms_removed == ()
    assert plan.clear_reals == (("XMPP", "127.0.2.3"),)  # a removed real's override goes
    assert plan.restart_probes  # the set of reals to probe changed
    assert plan.srv is None
    assert plan.summary() == {"reals_added": ["XMPP/127.0.2.4"],
                              "reals_removed": ["XMPP/127.0.2.3"],
                              "vservers_added": [], "vservers_removed": []}


def test_a_weight_change_is_a_changed_real_and_keeps_the_operators_word() -> None:
    new = edited(('address = "127.0.2.2"', 'address = "127.0.2.2"\nweight = 3'))
    plan = diff(load(BASE), new)
    assert plan.reals_changed == (("XMPP", "127.0.2.2"),)
    assert plan.reals_added == plan.reals_removed == ()
    assert plan.clear_reals == ()  # `real ... no-inservice` stays: the file left inservice


def test_inservice_changed_in_the_file_takes_the_real_back_from_the_operator() -> None:
    new = edited(('address = "127.0.2.2"', 'address = "127.0.2.2"\ninservice = false'))
    plan = diff(load(BASE), new)
    assert plan.reals_changed == (("XMPP", "127.0.2.2"),)
    assert plan.clear_reals == (("XMPP", "127.0.2.2"),)


def test_a_farm_added_and_one_removed_list_all_their_reals() -> None:
    muc = '\n[[serverfarm]]\nname = "MUC"\n[[serverfarm.real]]\naddress = "127.0.3.1"\n'
    old = load(BASE)
    new = load(BASE + muc)
    plan = diff(old, new)
    assert plan.farms_added == ("MUC",)
    assert plan.reals_added == (("MUC", "127.0.3.1"),)
    assert plan.clear_reals == ()
    back = diff(new, old)
    assert back.farms_removed == ("MUC",)
    assert back.reals_removed == (("MUC", "127.0.3.1"),)
    assert back.summary()["reals_removed"] == ["MUC/127.0.3.1"]


def test_vservers_added_removed_moved_and_changed() -> None:
    old = load(BASE)
    new = edited(('virtual = "127.0.0.1:5269"', 'virtual = "127.0.0.1:5270"'),
                 ('name = "P5222"\nvirtual = "127.0.0.1:5222"',
                  'name = "P5222"\nvirtual = "127.0.0.1:5222"\nheader_timeout = 3'))
    plan = diff(old, new)
    assert plan.vservers_moved == ("P5269",)
    assert plan.vservers_added == ("P5269",)  # a moved vserver listens anew ...
    assert plan.vservers_removed == ()  # ... and is not reported as removed
    assert plan.vservers_changed == ("P5222",)  # kept listening, new settings
    assert plan.clear_vservers == ("P5269",)
    gone = load(BASE.replace('[[vserver]]\nname = "P5269"', '[[vserver]]\nname = "S5269"'))
    plan = diff(old, gone)
    assert (plan.vservers_added, plan.vservers_removed) == (("S5269",), ("P5269",))
    assert plan.summary()["vservers_added"] == ["S5269"]
    assert plan.summary()["vservers_removed"] == ["P5269"]


def test_a_mode_change_moves_the_vserver() -> None:
    new = edited(('name = "P5269"', 'name = "P5269"\nmode = "directtls"'))
    assert diff(load(BASE), new).vservers_moved == ("P5269",)


def test_vserver_inservice_changed_in_the_file_clears_the_override() -> None:
    new = edited(('name = "P5269"', 'name = "P5269"\ninservice = false'))
    plan = diff(load(BASE), new)
    assert plan.vservers_changed == ("P5269",)
    assert plan.clear_vservers == ("P5269",)


def test_probes_restart_when_added_changed_or_removed() -> None:
    probe = '[[serverfarm.probe]]\ntype = "tcp"\n'
    with_probe = edited(('name = "XMPP"\n', f'name = "XMPP"\n{probe}'))
    slower = edited(('name = "XMPP"\n', f'name = "XMPP"\n{probe}interval = 30\n'))
    assert diff(load(BASE), with_probe).restart_probes  # also from none
    assert diff(with_probe, slower).restart_probes
    assert diff(with_probe, load(BASE)).restart_probes
    assert not diff(with_probe, with_probe).restart_probes
    weight = edited(('name = "XMPP"\n', f'name = "XMPP"\n{probe}'),
                    ('address = "127.0.2.1"', 'address = "127.0.2.1"\nweight = 2'))
    assert not diff(with_probe, weight).restart_probes  # a weight is no probe's business


def test_srv_starts_stops_or_reloads() -> None:
    srv = '\n[srv]\nzones = ["example.test"]\nlisten = "127.0.0.1:5353"\n'
    plain, published = load(BASE), load(BASE + srv)
    assert diff(plain, plain).srv is None
    assert diff(plain, published).srv == "start"
    assert diff(published, plain).srv == "stop"
    assert diff(published, published).srv == "reload"  # records follow every change


def test_a_change_of_workers_is_flagged() -> None:
    new = load(BASE.replace('[gateway]\n', '[gateway]\nworkers = 2\n'))
    plan = diff(load(BASE), new)
    assert plan.workers_changed
    assert plan == ReloadPlan(workers_changed=True)
