"""The OCI client against a registry with htpasswd auth (the real docker-registry), behind a
front that acts like hosted registries: blob downloads redirected to a CDN on another host,
and no catalog. Credentials must reach the registry and nothing else."""

from __future__ import annotations

import base64
import json

import pytest
from export_fixtures import make_prep_dir, make_run, recipes_with_storage
from oci_servers import cross_host_front, hosted_registry_front, non_loopback_ipv4, registry

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.export import export_run, pull
from pipeline.registry.oci import PASSWORD_ENV, PLAIN_HTTP_CREDENTIALS_ENV, USER_ENV

USER, PASSWORD = "alice", "s3cret-Pa55"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-run")
    return make_run(root / "run", make_prep_dir(root / "prep"))


@pytest.fixture(scope="module")
def authed_registry(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("reg-auth"), htpasswd={USER: PASSWORD}) as base:
        yield base


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def test_credentials_stay_with_the_registry_and_no_catalog_is_needed(authed_registry, tiny_run, tmp_path,
                                                                    credentials, capsys):
    with hosted_registry_front(authed_registry, BASIC) as (front, cdn_saw):
        uri = f"oci://{front.removeprefix('http://')}/countrytune"
        assert export_run(tiny_run.path, uri, "1", **QUIET) == "id/cpt-lora:1"
        out = pull("id/cpt-lora:1", uri, tmp_path / "pulled")  # every blob through the CDN
        assert (out / "adapter_model.safetensors").is_file()
        # Before the fix urllib copied the registry's Authorization header onto the redirect.
        assert cdn_saw and all(h is None for h in cdn_saw), cdn_saw

        # No catalog: one package by name works, a country listing says what to do.
        assert main(["list", "id/cpt-lora", "--registry", uri]) == 0
        assert "id/cpt-lora" in capsys.readouterr().out
        assert main(["list", "id", "--registry", uri]) == 2
        assert "does not list its repositories" in capsys.readouterr().err
        with pytest.raises(UserError, match="countrytune pull id/NAME"):
            pull("id", uri, tmp_path / "by-country")
        assert pull("id/cpt-lora", uri, tmp_path / "latest").is_dir()  # latest, by tag


def test_missing_or_wrong_credentials_say_what_to_set(authed_registry, tiny_run, monkeypatch):
    uri = f"oci://{authed_registry.removeprefix('http://')}/countrytune"
    monkeypatch.delenv(USER_ENV, raising=False)
    with pytest.raises(UserError, match=f"asks for credentials: set {USER_ENV}"):
        export_run(tiny_run.path, uri, "x1", **QUIET)
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(UserError, match="credentials refused"):
        export_run(tiny_run.path, uri, "x2", **QUIET)


def test_no_credentials_over_plain_http_to_another_host(tmp_path, tiny_run, credentials, monkeypatch):
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with registry(tmp_path / "reg", host=address, htpasswd={USER: PASSWORD}) as base:
        uri = f"oci://{base.removeprefix('http://')}/countrytune"
        # Not loopback, so not `local` to the storage rule: the profile must name it.
        monkeypatch.setenv("COUNTRYTUNE_RECIPES", str(recipes_with_storage(tmp_path, ["local", uri])))
        with pytest.raises(UserError, match="refusing to send credentials over plain http"):
            export_run(tiny_run.path, uri, "1", insecure=True, **QUIET)
        monkeypatch.setenv(PLAIN_HTTP_CREDENTIALS_ENV, "1")  # asked for explicitly
        assert export_run(tiny_run.path, uri, "1", insecure=True, **QUIET) == "id/cpt-lora:1"
        manifest = json.loads((pull("id/cpt-lora:1", uri, tmp_path / "p", insecure=True)
                               / "manifest.json").read_text())
        assert manifest["version"] == "1"


def test_credentials_never_follow_urls_the_server_hands_back_to_another_host(authed_registry, tiny_run,
                                                                         tmp_path, credentials, capsys):
    # Issue 24: an upload's Location and a catalog page's Link on 127.0.0.2 received
    # `Basic YWxpY2U6czNjcmV0` before the fix. The push and the listing still work: the other
    # host is reached without the registry's credentials.
    with cross_host_front(authed_registry, BASIC) as (front, other_saw):
        uri = f"oci://{front.removeprefix('http://')}/countrytune"
        assert export_run(tiny_run.path, uri, "cross-1", **QUIET) == "id/cpt-lora:cross-1"
        assert export_run(tiny_run.path, uri, "cross-2", **QUIET) == "id/cpt-lora:cross-2"
        uploads = len(other_saw)
        assert uploads > 0  # the uploads did go to the other host
        from pipeline.registry.refs import Ref
        from pipeline.registry import open_registry

        # A second repository, so that the catalog has a second page (one repository per page).
        registry_ = open_registry(uri)
        (tmp_path / "second").mkdir()
        (tmp_path / "second" / "file.txt").write_text("x")
        registry_.push(tmp_path / "second", Ref("id", "second", "1"))
        uploads = len(other_saw)
        assert sorted(p.name for p in open_registry(uri).packages()) == ["cpt-lora", "second"]
        assert len(other_saw) > uploads  # the catalog's next page was fetched from the other host
        assert all(h is None for h in other_saw), other_saw


def test_a_redirect_from_https_to_http_on_the_same_host_drops_the_credentials():
    import urllib.request

    from pipeline.registry.oci import _OPENER, _NoCredentialsAcrossOrigins

    handler = next(h for h in _OPENER.handlers if isinstance(h, _NoCredentialsAcrossOrigins))
    req = urllib.request.Request("https://registry.id.example/v2/x/blobs/sha256:ab",
                                 headers={"Authorization": BASIC})
    for target, kept in (("http://registry.id.example/v2/x/blobs/sha256:ab", False),
                         ("https://registry.id.example:443/elsewhere", True),
                         ("https://registry.id.example:8443/v2/", False),
                         ("https://cdn.example/blob", False)):
        new = handler.redirect_request(req, None, 307, "Temporary Redirect", {}, target)
        assert (new.get_header("Authorization") is not None) == kept, target
