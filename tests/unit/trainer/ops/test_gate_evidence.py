"""Which domains and texts the gate judges: both versions' lineages, the held-out half that adapt
never distils on, and a refusal naming a domain it has no texts of."""

import json
import zipfile

import pytest

from trainer.common.errors import RolloutError
from trainer.data.lineage import source_record
from trainer.data.reference_texts import REFERENCE_TEXTS_FILE, distil_half
from trainer.data.sources import load_source
from trainer.ops.gate_evidence import gate_holdouts

LABELS = ["negative", "neutral", "positive"]


def archive(path, domains, texts=None, sources=None, distilled=0, routed=False):
    """A stand-in .mar with only what the gate reads: report.json and the reference texts;
    `distilled` held-out rows in its own training step; `routed`: its router learnt from
    half of them."""
    records = {}
    for d in domains if sources is None else sources:
        test = load_source(d, 0)[d].test[:30]
        records[d] = source_record(d, 0, 0.5, 30, test)
    report = {"labels": LABELS, "domains_seen": list(domains), "domain": domains[-1],
              "domain_sources": records,
              "distillation": {"unlabelled_rows": distilled} if distilled else None,
              "routing": {"experts": {}} if routed else None}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("report.json", json.dumps(report))
        if texts is not None:
            z.writestr(REFERENCE_TEXTS_FILE, json.dumps(texts))
    return path


def held(domain, n=40):
    return [ex.text for ex in load_source(domain, 0)[domain].val[:n]]


def test_the_defaults_domains_are_old_domains_of_a_candidate_that_never_saw_them(tmp_path):
    default = archive(tmp_path / "m.v1.mar", ["nyt"], {"nyt": held("nyt")})
    candidate = archive(tmp_path / "m.v2.mar", ["tweets"], {"tweets": held("tweets")})
    new, out, notes = gate_holdouts(candidate, default, 20)
    assert new == "tweets" and list(out) == ["nyt", "tweets"]  # the new domain last
    assert len(out["nyt"].labelled) == 20  # the default's lineage rebuilds nyt's test split
    # every held-out text of the old domain, none of the new domain's
    assert out["nyt"].unlabelled == held("nyt") and out["tweets"].unlabelled == []
    assert notes == []
    # a candidate distilled on held-out texts: only the half it never trained on
    candidate = archive(tmp_path / "m.v3.mar", ["tweets"], distilled=17)
    _, out, _ = gate_holdouts(candidate, default, 20)
    assert out["nyt"].unlabelled == [t for t in held("nyt") if not distil_half(t)]
    assert 0 < len(out["nyt"].unlabelled) < 40
    # routed versions, candidate or default, likewise: their router learnt from the other half
    for routed_default, routed_candidate in ((False, True), (True, False)):
        d = archive(tmp_path / "m.v1.mar", ["nyt"], {"nyt": held("nyt")}, routed=routed_default)
        c = archive(tmp_path / "m.v4.mar", ["tweets"], routed=routed_candidate)
        assert gate_holdouts(c, d, 20)[1]["nyt"].unlabelled == [
            t for t in held("nyt") if not distil_half(t)]


def test_a_domain_without_any_texts_is_refused_by_name(tmp_path):
    default = archive(tmp_path / "m.v1.mar", ["amazon", "nyt"], {"nyt": held("nyt")},
                      sources=["nyt"])  # amazon: no test split recorded, no held-out texts
    candidate = archive(tmp_path / "m.v2.mar", ["tweets"])
    with pytest.raises(RolloutError, match="no texts of domain 'amazon'"):
        gate_holdouts(candidate, default, 20)


def test_held_out_texts_alone_or_a_labelled_test_alone_are_used_and_said(tmp_path):
    default = archive(tmp_path / "m.v1.mar", ["amazon", "nyt"], {"amazon": held("amazon")},
                      sources=["nyt"])
    candidate = archive(tmp_path / "m.v2.mar", ["tweets"])
    _, out, notes = gate_holdouts(candidate, default, 20)
    assert out["amazon"].labelled == [] and out["amazon"].unlabelled
    assert any(n.startswith("amazon: no labelled test split") for n in notes)
    assert any(n.startswith("nyt: neither archive carries held-out texts") for n in notes)


def test_traffic_before_the_drift_joins_the_one_old_domain_or_is_judged_on_its_own(tmp_path):
    from trainer.ops.gate_evidence import TRAFFIC

    traffic = [ex.text for ex in load_source("nyt", 0)["nyt"].train[:50]]
    default = archive(tmp_path / "m.v1.mar", ["nyt"], {"nyt": held("nyt")})
    candidate = archive(tmp_path / "m.v2.mar", ["nyt", "tweets"], {"nyt": held("nyt")})
    _, out, notes = gate_holdouts(candidate, default, 20, traffic + held("nyt")[:5])
    assert list(out) == ["nyt", "tweets"]  # no extra rule: more texts of what v1 serves
    assert out["nyt"].unlabelled == held("nyt") + traffic  # texts already held count once
    assert notes == ["nyt: + 50 texts of the traffic served before the drift"]
    # a default serving two domains: the traffic is a mixture, judged as one more old domain
    default = archive(tmp_path / "m.v3.mar", ["nyt", "movie"],
                      {"nyt": held("nyt"), "movie": held("movie")})
    candidate = archive(tmp_path / "m.v4.mar", ["nyt", "movie", "tweets"])
    _, out, notes = gate_holdouts(candidate, default, 20, traffic)
    assert list(out) == ["nyt", "movie", TRAFFIC, "tweets"]
    assert out[TRAFFIC].labelled == [] and out[TRAFFIC].unlabelled == traffic
    assert out["nyt"].unlabelled == held("nyt") and "one more old domain" in notes[-1]


def test_read_traffic_takes_sampled_rows_and_names_a_bad_line(tmp_path):
    from trainer.common.errors import DataError
    from trainer.ops.gate_evidence import read_traffic

    good = tmp_path / "before.jsonl"
    good.write_text('{"text": "a calm day", "label": "", "predicted": "neutral"}\n\n'
                    '{"text": " the rain again "}\n')
    assert read_traffic(good) == ["a calm day", "the rain again"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"label": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' is missing or empty"):
        read_traffic(bad)
