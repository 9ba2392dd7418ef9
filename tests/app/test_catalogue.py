"""The embedded model catalogue: assembly from parts, the sha256 check, and psr settings and round
predictor per model."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from app.catalogue import CATALOGUE, DEFAULT_MODEL, QWEN_CODER_1_5B, SMOLLM2, PsrDefaults, assemble
from app.rounds import RoundsPolicy
from app.settings import EmbeddedSettings, Settings
from predictor.card import ModelCard
from predictor.model import CARD_FILE, DEFAULT_ARTIFACT_DIR
from refiners.backend import BackendUnavailable, ChatMessage


def write_parts(folder: Path, blobs: list[bytes]) -> list[Path]:
    paths = []
    for number, blob in enumerate(blobs, start=1):
        path = folder / f"part{number:02d}.bin"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def test_parts_are_assembled_in_order_and_checked(tmp_path: Path) -> None:
    blobs = [b"GGUF" + bytes(range(200)), b"middle" * 50, b"end"]
    whole = b"".join(blobs)
    target = tmp_path / "cache" / "model.gguf"
    result = assemble(write_parts(tmp_path, blobs), target, len(whole), hashlib.sha256(whole).hexdigest())
    assert result == target
    assert target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no temporary file left behind


def test_a_file_whose_sha256_differs_is_refused_and_never_appears(tmp_path: Path) -> None:
    blobs = [b"GGUF", b"tampered"]
    whole = b"".join(blobs)
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(BackendUnavailable, match=r"refusing model\.gguf"):
        assemble(write_parts(tmp_path, blobs), target, len(whole), "0" * 64)
    assert list(target.parent.iterdir()) == []  # neither the file nor a partial one


def test_a_corrupted_cached_assembly_is_assembled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [b"GGUF-one", b"two"]
    whole = b"".join(blobs)
    package = tmp_path / "site" / "twice_test_parts"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_parts(package / "data", blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = replace(
        QWEN_CODER_1_5B,
        size_bytes=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=(("twice_test_parts", "data/part01.bin"), ("twice_test_parts", "data/part02.bin")),
    )
    cache = tmp_path / "cache"
    assert model.ensure(cache).read_bytes() == whole
    # the right size, the wrong bytes: located() finds it, ensure() must not trust it
    model.cached_path(cache).write_bytes(b"X" * len(whole))
    assert model.located(cache) is not None
    assert model.ensure(cache).read_bytes() == whole


def test_missing_data_packages_say_how_to_install_them(tmp_path: Path) -> None:
    model = replace(QWEN_CODER_1_5B, parts=(("twice_no_such_package", "data/part01.bin"),) * 2)
    with pytest.raises(BackendUnavailable, match="are not installed"):
        model.ensure(tmp_path)


def test_the_installed_catalogue_models_verify() -> None:
    """Both models' data packages are installed by the project; their files match the catalogue."""
    for model in CATALOGUE.values():
        assert model.part_paths() is not None, model.name
    assert SMOLLM2.ensure(Path("/nonexistent")).stat().st_size == SMOLLM2.size_bytes


def test_settings_refuse_a_model_the_catalogue_does_not_have() -> None:
    with pytest.raises(ValueError, match="unknown model 'llama-7b'"):
        EmbeddedSettings(model="llama-7b")


def test_served_name_follows_the_model() -> None:
    assert EmbeddedSettings().served_name == DEFAULT_MODEL
    assert EmbeddedSettings(model_path=Path("/m/My-Model.Q4.gguf")).served_name == "My-Model.Q4"
    assert EmbeddedSettings(model_path=Path("/m/x.gguf"), model_name="mine").served_name == "mine"
    assert EmbeddedSettings(model_path=Path("/m/x.gguf")).catalogue_model is None


@pytest.fixture
def no_twice_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from their defaults: no TWICE_* variable of the test run's own."""
    for name in list(os.environ):
        if name.startswith("TWICE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_twice_env")
def test_a_models_psr_settings_apply_unless_the_operator_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    own = PsrDefaults(threshold=0.37, chunk_tokens=24, review="in_context", source="test")
    monkeypatch.setitem(CATALOGUE, "qwen2.5-coder-1.5b-instruct", replace(QWEN_CODER_1_5B, psr=own))
    defaults = Settings().psr
    assert (defaults.threshold, defaults.chunk_tokens, defaults.review) == (0.37, 24, "in_context")
    monkeypatch.setenv("TWICE_PSR__THRESHOLD", "0.6")
    overridden = Settings().psr
    assert (overridden.threshold, overridden.chunk_tokens) == (0.6, 24)
    monkeypatch.setenv("TWICE_BACKEND", "vllm")
    assert Settings().psr.chunk_tokens == 32  # vLLM serves another model: the generic defaults


@pytest.mark.usefixtures("no_twice_env")
def test_a_models_own_round_predictor_applies_unless_the_operator_names_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert QWEN_CODER_1_5B.predictor is not None
    assert SMOLLM2.predictor is None
    served = Settings().plan.predictor_path
    assert served == QWEN_CODER_1_5B.predictor
    card = ModelCard.read(served / CARD_FILE)
    assert card.training_data["provenance"]["model"] == QWEN_CODER_1_5B.name
    monkeypatch.setenv("TWICE_PLAN__AUTO_EXPLORE_SHARE", "0")
    capital = (ChatMessage("user", "What is the capital of France?"),)
    # Each card's floor: Qwen's was trained with floor 1, the package default with 0.
    assert RoundsPolicy.from_settings(Settings().plan).decide("auto", capital).granted == 1
    monkeypatch.setenv("TWICE_EMBEDDED__MODEL", SMOLLM2.name)
    assert Settings().plan.predictor_path is None  # the package default
    assert RoundsPolicy.from_settings(Settings().plan).decide("auto", capital).granted == 0
    monkeypatch.delenv("TWICE_EMBEDDED__MODEL")
    monkeypatch.setenv("TWICE_PLAN__PREDICTOR_PATH", str(tmp_path))
    assert Settings().plan.predictor_path == tmp_path
    monkeypatch.delenv("TWICE_PLAN__PREDICTOR_PATH")
    monkeypatch.setenv("TWICE_BACKEND", "vllm")
    assert Settings().plan.predictor_path is None  # vLLM serves another model
    assert QWEN_CODER_1_5B.predictor != DEFAULT_ARTIFACT_DIR


def test_twice_models_lists_each_model_and_where_it_is(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "models"],
        env={"TWICE_EMBEDDED__CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"{DEFAULT_MODEL} (default)" in done.stdout
    assert "judges its own answers: yes" in done.stdout
    assert "judges its own answers: no" in done.stdout
    assert f"round predictor for auto: its own, {QWEN_CODER_1_5B.predictor}" in done.stdout
    assert "round predictor for auto: the package default" in done.stdout
    assert f"assembled into {tmp_path}" in done.stdout  # not there yet in an empty cache
    assert str(SMOLLM2.part_paths()[0]) in done.stdout  # type: ignore[index]
