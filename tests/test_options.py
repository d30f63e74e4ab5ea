"""Options have one home (engine.options): the CLI flags, the spec check and the Runs form cover every field, and a
field's cache-key flag is what the methods' cache keys obey."""

from __future__ import annotations

import argparse

import pytest

from engine.cache.context import StepContext
from engine.errors import SpecError
from engine.features import extract
from engine.finetune import loop
from engine.methods import harness, registry, tfidf, vectors
from engine.methods.base import Job, Method
from engine.models.devices import choose
from engine.options import flags, groups
from engine.options.groups import Options
from engine.protocols import plans

FIELDS = groups.fields()
IDENTITY = {"name": "tiny", "source": "local", "path": "/models/tiny", "weights_sha256": "ab" * 32}


def another_value(f: groups.FieldSpec):
    """A valid value of the field that differs from its default."""
    if f.kind == "bool":
        return not f.default
    if f.choices is not None:
        return next(c for c in f.choices if c != f.default)
    if f.kind == "list":
        return ["query", "value"]
    if f.kind == "sizes":
        return [8, 16, 32]
    if f.kind == "map":
        return {"cardiology": "heart", "urology": "kidney"}
    if f.kind == "str":
        return "Letter: {text}\nSpecialty:"
    if f.kind == "int":
        return (f.default or f.min or 0) + 1 if f.max is None or (f.default or f.min or 0) + 1 <= f.max else f.max - 1
    lo, hi = f.min if f.min is not None else 0.0, f.max if f.max is not None else 1.0
    value = (lo + hi) / 2 if f.default is None else (f.default + hi) / 2
    return value if value != f.default else lo


def out_of_range(f: groups.FieldSpec):
    if f.kind in ("int", "float") and f.min is not None:
        return f.min - (1 if f.kind == "int" else f.min / 2 + 0.01)
    if f.choices is not None:
        return "no-such-choice"
    return None


def test_every_field_is_documented_and_unique():
    assert len({f.name for f in FIELDS}) == len(FIELDS) > 20
    for f in FIELDS:
        assert f.help and f.group in groups.GROUPS and f.kind in ("bool", "int", "float", "str", "list", "sizes", "map")
        assert f.default is None or f.optional or type(f.default).__name__ == {"map": "dict"}.get(f.kind, f.kind)


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_spec_check_accepts_each_field_and_refuses_bad_values_by_name(f):
    value = another_value(f)
    assert Options.parse({f.name: value}).get(f.name) == value
    with pytest.raises(SpecError, match=f"option {f.name} has the wrong type"):
        Options.parse({f.name: {"a": 1}})  # a mapping whose value is not text: wrong for every kind
    bad = out_of_range(f)
    if bad is not None:
        with pytest.raises(SpecError, match=f"option {f.name}"):
            Options.parse({f.name: bad})


def test_spec_check_names_an_unknown_option_and_suggests_the_close_one():
    with pytest.raises(SpecError, match=r"unknown option 'max_lenght'\. Did you mean 'max_length'\?"):
        Options.parse({"max_lenght": 128})


def test_the_cli_has_one_flag_per_field_with_the_same_checks():
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == {f.name for f in FIELDS}
    for f in FIELDS:
        value = another_value(f)
        if f.kind == "bool":
            argv = [f.flag if value else "--no-" + f.flag[2:]]
        elif f.kind in ("list", "sizes"):
            argv = [f.flag, ",".join(map(str, value))]
        elif f.kind == "map":
            argv = [f.flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv = [f.flag, str(value)]
        assert flags.from_args(parser.parse_args(argv)).get(f.name) == value, f.name
    assert flags.from_args(parser.parse_args([])) == Options()
    with pytest.raises(SpecError, match="--max-length = 2 is out of range"):
        flags.from_args(parser.parse_args(["--max-length", "2"]))


def test_the_runs_form_has_one_widget_per_field(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(ROOT / "pages" / "3_Runs.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    keys = {w.key for kind in ("toggle", "selectbox", "number_input", "text_input", "text_area") for w in getattr(at, kind) if w.key}
    assert {f"opt-{f.name}" for f in FIELDS} <= keys


def test_to_dict_is_flat_and_round_trips():
    opts = Options.parse({"epochs": 3, "pooling": "last", "target_modules": ["q_proj"]})
    flat = opts.to_dict()
    assert list(flat) == [f.name for f in FIELDS] and Options.parse(flat) == opts
    assert opts.finetune.resolved("lora").learning_rate == 5e-4 and opts.finetune.resolved("lora").epochs == 3


def _artifact_key(method: str, opts: Options, ds) -> str:
    """The key under which `method` stores its result for these options: its own key, plus what the harness adds."""
    kind = registry.get(method)
    key = _method_key(method, opts, ds)
    if kind.produces != "classifier":
        return key
    ds = plans.prepare(ds, opts.protocol)
    return harness.cache_key(_job(kind, opts, ds), key)


def _job(kind: Method, opts: Options, ds) -> Job:
    opts = kind.options(opts)
    return Job(kind, ds, "tiny", opts, kind.plan(ds, opts), StepContext(), choose(), 0.0)


def _method_key(method: str, opts: Options, ds) -> str:
    """The key a method computes for these options (what its step function computes)."""
    ds = plans.prepare(ds, opts.protocol)
    if method == "domain-adapt":  # the dataset's own split under fixed, else a hold-out split (+ an answers hash: none here)
        plan = registry.get(method).plan(ds, opts)
        return loop.training_key(
            method, IDENTITY, ds.data_hash, opts, "bfloat16", {"domain": groups.key_dict(opts.domain), "plan": plan.hash}
        )
    plan = plans.plan(ds, opts.protocol, method)
    if method == "lora":
        return loop.training_key(method, IDENTITY, ds.data_hash, opts, "bfloat16", {"plan": plan.hash})
    if method == "linear-probe":
        from engine.methods import linear_probe

        return linear_probe.probe_key(IDENTITY, ds.data_hash, opts, "bfloat16", plan.hash)
    two_labels = len(ds.classes) == 2  # (the decision options act on two-label tasks only)
    if method == "tfidf":
        return tfidf.evaluation_key(opts, plan.hash, two_labels)
    if method == "setfit":
        from engine.methods import setfit

        carved = _job(setfit.METHOD, opts, ds).needs_decision
        return setfit.setfit_key(IDENTITY, ds.data_hash, opts, "bfloat16", plan.hash, carved)
    if method in ("zero-shot", "few-shot"):  # (few-shot keys val_size when it carves the threshold's letters)
        job = _job(registry.get(method), opts, ds)
        job.identity = IDENTITY
        return registry.get(method).key(job)
    if method == "instruct-lora":
        from engine.methods import instruct_lora

        return instruct_lora.instruct_key(IDENTITY, ds.data_hash, opts, "bfloat16", plan.hash)
    identity = IDENTITY
    if method == "lora-svc":
        identity = {**IDENTITY, "adapter": _artifact_key("lora", opts, ds)}
    if method == "adapt-svc":  # the model adapted to the stored classifier's letters (every letter under cv)
        adapted = loop.training_key(
            method, IDENTITY, ds.data_hash, opts, "bfloat16", {"domain": groups.key_dict(opts.domain), "plan": plan.hash}
        )
        identity = {**IDENTITY, "adapted": adapted, "fold": "all" if plan.name == "cv" else "r0f0"}
    e = opts.embedding
    ek = extract.embedding_key(identity, e.pooling, e.max_length, "bfloat16", ds.text_hash, e.windows)
    return vectors.evaluation_key(ek, "svc" if method in ("lora-svc", "adapt-svc") else method, method, opts, plan.hash, two_labels)


# Options that only act under one protocol (the 600 default letters are scored by holdout under `auto`).
WHERE_IT_MATTERS = {"cv_folds": {"protocol": "cv"}, "cv_repeats": {"protocol": "cv"}, "test_size": {"protocol": "holdout"}}
# Options a method reads on two-label tasks with a threshold only (setfit and few-shot carve their decision letters only then).
TWO_LABELS_ONLY = {("setfit", "val_size"), ("few-shot", "val_size")}


@pytest.fixture(scope="module")
def _groups_found_once():
    """plans.groups_of remembered per (letters, threshold): normalising the 600 letters for each of the ~120 keys of a method
    was 90% of this file's time, and the groups are the same every time (each key still hashes the plan they make)."""
    found: dict = {}
    groups_of = plans.groups_of

    def remembered(ds, near_threshold=None):
        at = (tuple(ds.texts), near_threshold)
        if at not in found:
            found[at] = groups_of(ds, near_threshold)
        return found[at].copy()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plans, "groups_of", remembered)
        yield


@pytest.mark.parametrize("kind", list(registry.KINDS.values()), ids=lambda k: k.name)
def test_key_options_a_method_reads_change_its_cache_key_and_the_others_do_not(kind, default_ds, _groups_found_once):
    two = default_ds.without([i for i, lab in enumerate(default_ds.labels) if lab not in default_ds.classes[:2]])
    for f in FIELDS:
        ds = two if f.group == "decision" or (kind.name, f.name) in TWO_LABELS_ONLY else default_ds  # (threshold: two labels)
        setting = Options().replace(**WHERE_IT_MATTERS.get(f.name, {}))
        if f.name == "positive_label":
            setting = setting.replace(positive_label=two.classes[0])
        base = _artifact_key(kind.name, setting, ds)
        value = 3 if f.name == "cv_repeats" else two.classes[1] if f.name == "positive_label" else another_value(f)
        changed = _artifact_key(kind.name, setting.replace(**{f.name: value}), ds)
        if f.name == "chat_template":  # keyed by what it resolves to for a model's tokenizer (tests/test_prompting.py)
            continue
        if f.key and f.name in kind.reads:
            assert changed != base, f"{kind.name}: option {f.name} changes results but not the cache key"
        elif not f.key:
            assert changed == base, f"{kind.name}: option {f.name} is marked as not entering keys"


def test_a_mapping_option_reads_json_or_name_text_pairs():
    assert Options.parse({"verbalizers": "cardiology=heart, urology = kidney"}).get("verbalizers") == {
        "cardiology": "heart",
        "urology": "kidney",
    }
    assert Options.parse({"verbalizers": '{"a": "x y"}'}).get("verbalizers") == {"a": "x y"}
    assert Options.parse({"verbalizers": "a=x\nb=y"}).get("verbalizers") == {"a": "x", "b": "y"}
    with pytest.raises(SpecError, match="'heart' is not name=text"):
        Options.parse({"verbalizers": "heart"})
    with pytest.raises(SpecError, match="not valid JSON"):
        Options.parse({"verbalizers": "{nope"})
