"""Settings: file, environment and flags, in that rising order; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from samie_node.config import Peer, Settings, load_settings
from samie_node.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_embedded_defaults() -> None:
    assert load_settings(REPO / "config" / "samie-node.toml") == Settings()


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[node]\nport = 2000\nae_title = "FROMFILE"\n')
    monkeypatch.setenv("SAMIE_NODE__PORT", "3000")
    settings = load_settings(config)
    assert (settings.node.port, settings.node.ae_title) == (3000, "FROMFILE")
    flagged = load_settings(config, {"node": {"port": 4000}})
    assert (flagged.node.port, flagged.node.ae_title) == (4000, "FROMFILE")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ('[node]\nae_title = "BACK\\\\SLASH"\n', "node.ae_title"),
        ("[node]\nunknown = 1\n", "node.unknown"),
        ('[segmenter]\nkind = "sam"\n', "sam_checkpoint"),
        ("[segmenter]\nbox = [0.5, 0.5, 0.1, 0.9]\n", "box"),
        ("[node\n", "cannot read"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_settings(config)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_peer_parsing() -> None:
    peer = Peer.parse("ORTHANC@pacs.example.org:4242")
    assert (peer.ae_title, peer.host, peer.port, peer.label) == (
        "ORTHANC",
        "pacs.example.org",
        4242,
        "ORTHANC@pacs.example.org:4242",
    )
    assert Peer.parse("PACS@[::1]:104").host == "::1"
    for bad in ["ORTHANC", "ORTHANC@host", "A@h:0", "A@h:99999", "THIS_AE_IS_FAR_TOO_LONG@h:1", "@h:1"]:
        with pytest.raises(ConfigError):
            Peer.parse(bad)


def test_dicomweb_destinations_beside_dimse_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[send.destinations]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
        '[[send.destinations]]\nkind = "dicomweb"\nname = "archive"\nurl = "https://pacs/dicom-web/"\n'
        'username = "u"\npassword = "p"\n'
    )
    send = load_settings(config).send
    assert [d.kind for d in send.destinations] == ["dimse", "dicomweb"]  # a destination without kind is DIMSE
    assert send.destination("dicomweb:archive").url == "https://pacs/dicom-web"  # type: ignore[union-attr]
    assert send.destination("PACS@10.0.0.5:104") == send.destinations[0]
    with pytest.raises(ConfigError, match="no DICOMweb destination named 'other'"):
        send.destination("dicomweb:other")
    bad = '[[send.destinations]]\nkind = "dicomweb"\nname = "x"\nurl = "https://p"\n'
    bad += 'username = "u"\npassword = "p"\ntoken = "t"\n'
    config.write_text(bad)
    with pytest.raises(ConfigError, match="not both"):
        load_settings(config)
