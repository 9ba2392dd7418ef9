"""The admin API: experiments created, changed, paused and deleted at run time, and their results.

Every route needs the admin key (`Authorization: Bearer <TWICE_AUTH__ADMIN_KEY>`); a client API key gets 403.
Every change answers with the version it made; other replicas see it within `poll_interval_s`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

from app.api.deps import ServicesDep, require_admin
from app.errors import Conflict, InvalidRequest
from app.experiments.spec import Experiment, ExperimentSpec
from app.protocol.admin import Deleted, ExperimentList, ExperimentPatch, ExperimentRecord, HistoryEntry

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

_PATCH_TRIES = 3


def _record(experiment: Experiment) -> ExperimentRecord:
    return ExperimentRecord.model_validate(experiment.to_dict())


@router.get("/experiments", response_model=ExperimentList)
async def list_experiments(services: ServicesDep) -> ExperimentList:
    """The definitions this replica serves with (refreshed from Redis first when it answers)."""
    store = services.experiments
    await store.refresh_quietly()
    return ExperimentList(data=[_record(e) for e in store.all()])


@router.post("/experiments", response_model=ExperimentRecord, status_code=status.HTTP_201_CREATED)
async def create_experiment(spec: ExperimentSpec, services: ServicesDep) -> ExperimentRecord:
    return _record(await services.experiments.create(spec))


@router.get("/experiments/{name}", response_model=ExperimentRecord)
async def read_experiment(name: str, services: ServicesDep) -> ExperimentRecord:
    return _record(await services.experiments.read(name))


@router.put("/experiments/{name}", response_model=ExperimentRecord)
async def replace_experiment(
    name: str, spec: ExperimentSpec, services: ServicesDep, expected_version: int | None = None
) -> ExperimentRecord:
    if spec.name != name:
        raise InvalidRequest(f"The body names {spec.name!r}, the path {name!r}.", param="name")
    return _record(await services.experiments.replace(spec, expected_version))


@router.patch("/experiments/{name}", response_model=ExperimentRecord)
async def patch_experiment(name: str, patch: ExperimentPatch, services: ServicesDep) -> ExperimentRecord:
    """Change weights, pause or description; retried on a concurrent change unless `expected_version`."""
    store = services.experiments
    for attempt in range(_PATCH_TRIES):
        current = await store.read(name)
        expected = patch.expected_version if patch.expected_version is not None else current.version
        try:
            return _record(await store.replace(_patched(current, patch), expected))
        except Conflict:
            if patch.expected_version is not None or attempt == _PATCH_TRIES - 1:
                raise
    raise AssertionError("unreachable")


@router.post("/experiments/{name}/pause", response_model=ExperimentRecord)
async def pause_experiment(name: str, services: ServicesDep) -> ExperimentRecord:
    return await patch_experiment(name, ExperimentPatch(paused=True), services)


@router.post("/experiments/{name}/resume", response_model=ExperimentRecord)
async def resume_experiment(name: str, services: ServicesDep) -> ExperimentRecord:
    return await patch_experiment(name, ExperimentPatch(paused=False), services)


@router.delete("/experiments/{name}", response_model=Deleted)
async def delete_experiment(name: str, services: ServicesDep) -> Deleted:
    """Deletes the definition and its results; its history and version numbers are kept."""
    version = await services.experiments.delete(name)
    await services.results.forget(name)
    return Deleted(name=name, version=version)


@router.get("/experiments/{name}/history", response_model=list[HistoryEntry])
async def experiment_history(name: str, services: ServicesDep) -> list[dict[str, Any]]:
    return await services.experiments.history(name)


@router.get("/experiments/{name}/results")
async def experiment_results(name: str, services: ServicesDep) -> dict[str, Any]:
    """Per-variant counts, refusals, tokens, latency and feedback, with Welch 95% CIs against the control."""
    return await services.results.summary(await services.experiments.read(name))


def _patched(current: Experiment, patch: ExperimentPatch) -> ExperimentSpec:
    data = current.spec.model_dump()
    if patch.weights is not None:
        known = {v["name"] for v in data["variants"]}
        unknown = sorted(set(patch.weights) - known)
        if unknown:
            raise InvalidRequest(f"weights: no variant named {unknown[0]!r}.", param="weights")
        for variant in data["variants"]:
            variant["weight"] = patch.weights.get(variant["name"], variant["weight"])
    if patch.paused is not None:
        data["paused"] = patch.paused
    if patch.description is not None:
        data["description"] = patch.description
    return ExperimentSpec.model_validate(data)
