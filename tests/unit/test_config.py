"""Config schema: valid files load, invalid ones name the bad field's path."""

from __future__ import annotations

from typing import get_args

import pytest

from llmgw_cli.main import main as cli_main
from llmgw_cli.starter import starter_config
from fake_secrets import fake_key
from llmgw_common.config import (ClaudeCodeProviderConfig, ConfigError, CopilotProviderConfig, GeminiCliProviderConfig,
                                 OpenAIProviderConfig, PROVIDER_CONFIGS, ProviderConfig, ProviderType, masked,
                                 parse_config, parse_config_text, resolve_secret)

LITERAL_KEY = fake_key()
GOOD = """
version: 1
providers:
  - id: groq
    base_url: https://api.groq.com/openai/v1
    api_key: ${GROQ_API_KEY}
    free_tier: true
    limits: {requests_per_minute: 30}
    models:
      - name: llama-3.3-70b
        upstream: llama-3.3-70b-versatile
  - id: openai
    base_url: https://api.openai.com/v1/
    api_key: {literal_key}
    models:
      - name: gpt-4o-mini
        price: {input_per_mtok: 0.15, output_per_mtok: 0.6}
routing:
  aliases: {fast: llama-3.3-70b}
""".replace("{literal_key}", LITERAL_KEY)


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "test.yaml")
    return dict(err.value.problems)


def test_good_config_loads():
    cfg = parse_config_text(GOOD)
    assert cfg.provider("openai").base_url == "https://api.openai.com/v1"  # trailing slash dropped
    assert cfg.provider("groq").model("llama-3.3-70b").upstream_name == "llama-3.3-70b-versatile"
    assert cfg.provider("openai").model("gpt-4o-mini").upstream_name == "gpt-4o-mini"


def test_bad_field_is_named_by_its_path():
    bad = GOOD.replace("base_url: https://api.groq.com/openai/v1", "base_url: groq.com")
    assert "providers[0].base_url" in problems(bad)


def test_nested_bad_field_path():
    bad = GOOD.replace("requests_per_minute: 30", "requests_per_minute: -3")
    assert "providers[0].limits.requests_per_minute" in problems(bad)
    bad = GOOD.replace("output_per_mtok: 0.6", "output_per_mtok: lots")
    assert "providers[1].models[0].price.output_per_mtok" in problems(bad)


def test_capacity_lease_settings_are_checked():
    assert parse_config_text(GOOD).routing.leases is True  # on unless turned off: limited routes admit from leases
    assert "routing.lease_ttl_s" in problems(GOOD + "  lease_ttl_s: 0\n")
    assert "routing.lease_ttl_s" in problems(GOOD + "  lease_ttl_s: 600\n")
    assert "routing.leases" in problems(GOOD + "  leases: maybe\n")


def test_unknown_keys_are_rejected():
    assert "providers[0].moddels" in problems(GOOD.replace("    models:\n      - name: llama", "    moddels: []\n    models:\n      - name: llama", 1))


def test_duplicate_provider_ids_and_dangling_alias():
    assert any("unique" in m for m in problems(GOOD.replace("id: openai", "id: groq")).values())
    assert "not served" in problems(GOOD.replace("fast: llama-3.3-70b", "fast: nope"))["routing.aliases.fast"]


def test_yaml_syntax_error_gives_line():
    p = problems("providers: [\n  - id: x\n")
    assert any("line" in path for path in p)


def test_env_reference_resolution():
    assert resolve_secret("${GROQ_API_KEY}", {"GROQ_API_KEY": "gsk_abc"}) == "gsk_abc"
    assert resolve_secret("${GROQ_API_KEY}", {}) is None
    assert resolve_secret("literal", {}) == "literal"
    assert "${NAME}" in problems(GOOD.replace("${GROQ_API_KEY}", "${bad name}"))["providers[0].api_key"]


def test_masked_hides_literals_but_keeps_env_references():
    data = masked(parse_config_text(GOOD))
    keys = {p["id"]: p["api_key"] for p in data["providers"]}
    assert keys == {"groq": "${GROQ_API_KEY}", "openai": "********"}
    assert LITERAL_KEY not in str(data)


def test_starter_config_is_valid_with_and_without_keys():
    bare = parse_config_text(starter_config({}))
    assert [p.id for p in bare.providers] == ["demo", "demo-anthropic"] and bare.demo.enabled
    full = parse_config_text(starter_config({k: "x" for k in (
        "OPENAI_API_KEY", "GEMINI_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY", "OPENROUTER_API_KEY",
        "ANTHROPIC_API_KEY")}))
    assert {p.id for p in full.providers} == {"demo", "demo-anthropic", "openai", "gemini", "groq", "mistral",
                                              "openrouter", "anthropic"}
    assert full.provider("gemini").type == "gemini" and full.provider("anthropic").type == "anthropic"
    # keys are references, never literals
    assert all(p.api_key is None or p.api_key.startswith("${") for p in full.providers)


def test_config_check_command(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    with pytest.raises(SystemExit) as ok:
        cli_main(["config", "check", str(good)])
    assert ok.value.code == 0 and "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("free_tier: true", "free_tier: maybe"))
    with pytest.raises(SystemExit) as fail:
        cli_main(["config", "check", str(bad)])
    assert fail.value.code == 1 and "providers[0].free_tier" in capsys.readouterr().err


def test_masked_hides_credentials_in_the_price_source_url():
    cfg = parse_config_text(GOOD + "pricing:\n  source_url: https://user:pw@prices.example/p.json?token=abc\n")
    shown = masked(cfg)["pricing"]["source_url"]
    assert "pw" not in shown and "abc" not in shown and shown.startswith("https://********@prices.example/p.json")


# ---- provider types: each type's own fields ----------------------------------------------------------

def provider_problems(**fields) -> dict[str, str]:
    entry = {"id": "p", "models": [{"name": "m"}], **fields}
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": [{"id": "ok", "models": [{"name": "ok"}]}, entry]})
    return dict(err.value.problems)


def test_each_provider_type_is_its_own_class_with_its_own_fields():
    cfg = parse_config({"providers": [
        {"id": "o", "models": [{"name": "a"}]},  # no type: openai
        {"id": "c", "type": "claude_code", "command": ["claude"], "max_concurrency": 2, "models": [{"name": "b"}]},
        {"id": "cp", "type": "copilot", "token_file": "~/gh.json", "models": [{"name": "c"}]}]})
    openai, cli, copilot = cfg.providers
    assert isinstance(openai, OpenAIProviderConfig) and openai.base_url == "https://api.openai.com/v1"
    assert isinstance(cli, ClaudeCodeProviderConfig) and cli.max_concurrency == 2
    assert not hasattr(cli, "base_url") and not hasattr(cli, "api_key")
    assert isinstance(copilot, CopilotProviderConfig) and copilot.base_url is None  # its own default, in the edge
    # built directly, the type picks the class too
    assert isinstance(ProviderConfig(id="g", type="gemini_cli", models=[{"name": "m"}]), GeminiCliProviderConfig)
    assert isinstance(ProviderConfig(id="g", models=[{"name": "m"}]), OpenAIProviderConfig)
    assert isinstance(ProviderConfig.model_validate({"id": "g", "type": "gemini_cli", "models": [{"name": "m"}]}),
                      GeminiCliProviderConfig)


def test_every_provider_type_has_its_config_class():
    assert set(PROVIDER_CONFIGS) == set(get_args(ProviderType))
    assert all(cls.model_fields["type"].default == kind for kind, cls in PROVIDER_CONFIGS.items())


def test_a_field_of_another_provider_type_is_named_as_such():
    assert provider_problems(command=["claude"])["providers[1].command"].startswith(
        "not a field of an openai provider (only claude_code and gemini_cli providers have it)")
    assert provider_problems(type="gemini_cli", api_key="${K}")["providers[1].api_key"].startswith(
        "not a field of a gemini_cli provider")
    assert "providers[1].token_file" in provider_problems(type="anthropic", token_file="x")
    assert "providers[1].responses_api" in provider_problems(type="gemini", responses_api=True)
    assert "providers[1].headers" in provider_problems(type="claude_code", headers={"a": "b"})


def test_unknown_provider_type_names_the_types_and_the_nearest():
    message = provider_problems(type="antropic")["providers[1].type"]
    assert "unknown type 'antropic'" in message and "claude_code" in message
    assert message.endswith("(did you mean `anthropic`?)")
    assert provider_problems(type=3)["providers[1].type"].startswith("unknown type 3")


def test_typos_get_the_nearest_valid_name():
    p = problems(GOOD + "  stategy: priority\n")
    assert p["routing.stategy"] == "unknown field (did you mean `strategy`?)"
    assert p.keys() == {"routing.stategy"}
    p = problems(GOOD + "  strategy: round-robbin\n")
    assert p["routing.strategy"].endswith("(did you mean `round-robin`?)")
    p = problems(GOOD.replace("free_tier: true", "fre_tier: true"))
    assert p["providers[0].fre_tier"] == "not a field of an openai provider (did you mean `free_tier`?)"
    p = problems(GOOD + "  rules:\n    - name: r\n      action: {providers: [grok]}\n")
    assert p["routing.rules[0].action.providers[0]"] == "unknown provider 'grok' (did you mean `groq`?)"


def test_every_problem_in_one_pass():
    """A field error does not hide the cross references (they used to need every field valid first)."""
    bad = (GOOD.replace("free_tier: true", "free_tier: maybe")
           + "  rules:\n    - name: r\n      action: {providers: [nobody]}\n")
    assert problems(bad).keys() == {"providers[0].free_tier", "routing.rules[0].action.providers[0]"}
    two = GOOD + "  groups: {g: [x, y]}\n"
    assert problems(two).keys() == {"routing.groups.g[0]", "routing.groups.g[1]"}


# ---- llmgw config check --------------------------------------------------------------------------------

def config_check(tmp_path, capsys, text: str) -> tuple[int, str, str]:
    path = tmp_path / "llmgw.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as done:
        cli_main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return done.value.code, out.replace(str(path), "FILE"), err.replace(str(path), "FILE")


def test_config_check_reports_every_error_at_its_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "set")
    bad = (GOOD.replace("free_tier: true", "fre_tier: true")  # line 7
           .replace("    api_key: {literal_key}".replace("{literal_key}", LITERAL_KEY),
                    "    type: antropic")  # line 14
           + "  stategy: priority\n"  # line 20
           + "  rules:\n    - name: r\n      action: {providers: [grok]}\n")  # line 23
    code, out, err = config_check(tmp_path, capsys, bad)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "FILE:7: providers[0].fre_tier: not a field of an openai provider (did you mean `free_tier`?)",
        "FILE:14: providers[1].type: unknown type 'antropic': one of openai, anthropic, gemini, copilot, "
        "claude_code, gemini_cli (did you mean `anthropic`?)",
        "FILE:20: routing.stategy: unknown field (did you mean `strategy`?)",
        "FILE:23: routing.rules[0].action.providers[0]: unknown provider 'grok' (did you mean `groq`?)",
        "FILE: invalid (4 errors)",
    ]


def test_config_check_points_at_a_yaml_syntax_error(tmp_path, capsys):
    code, _, err = config_check(tmp_path, capsys, "version: 1\nproviders: [\n  - id: x\n")
    assert code == 1 and err.splitlines()[0].startswith("FILE:3: not valid YAML") and "(1 error)" in err


def test_a_key_written_twice_is_an_error_at_its_second_line(tmp_path, capsys):
    # plain YAML keeps the last one: a second `routing:` would silently drop the first
    text = "version: 1\nrouting:\n  strategy: cost\nproviders: []\nrouting:\n  strategy: latency\n"
    code, _, err = config_check(tmp_path, capsys, text)
    assert code == 1 and err.splitlines()[0] == "FILE:5: not valid YAML: duplicate key 'routing' (first at line 2)"
    merged = "base: &b {strategy: cost}\nrouting:\n  <<: *b\n  strategy: latency\n"  # a merge may be overridden
    assert "duplicate" not in str(problems(merged))


def test_config_check_warns_on_unset_env_references(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    code, out, err = config_check(tmp_path, capsys, GOOD)
    assert code == 0  # a warning: the file is valid, the provider only cannot authenticate
    assert err == "FILE:6: warning: providers[0].api_key: ${GROQ_API_KEY} is not set in the environment\n"
    assert out == "FILE: OK (2 providers, 2 models, 1 alias, 0 rules, 1 warning)\n"
    monkeypatch.setenv("GROQ_API_KEY", "gsk_set")
    code, out, err = config_check(tmp_path, capsys, GOOD)
    assert code == 0 and err == "" and out == "FILE: OK (2 providers, 2 models, 1 alias, 0 rules)\n"


def test_config_check_counts_in_words(tmp_path, capsys):
    one = "providers:\n  - id: solo\n    base_url: http://127.0.0.1:9\n    models: [{name: m}]\n"
    assert config_check(tmp_path, capsys, one)[1] == "FILE: OK (1 provider, 1 model, 0 aliases, 0 rules)\n"
    two_errors = one.replace("id: solo", "id: Solo").replace("models:", "weight: -1\n    models:")
    code, _, err = config_check(tmp_path, capsys, two_errors)
    assert code == 1 and err.splitlines()[-1] == "FILE: invalid (2 errors)"
