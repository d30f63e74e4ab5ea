"""Run options and settings: what a user can set, and where ClinBench keeps things.

fieldspec  how one option is declared and checked: option(), FieldSpec, coerce
groups     the typed options, one dataclass per concern (Options): spec check, form, manifest, cache keys
flags      the command-line flags derived from the option fields
specfile   a spec file (YAML/JSON) read into the object a spec is checked from
config     where things live (cache folder, bundled resources), package versions, the machine
"""
