"""Where a model folder comes from: ``hf://ORG/NAME[@REVISION]``, ``pvc://CLAIM[/PATH]`` or an
absolute path, and ``saguaro fetch-model`` (the Helm chart's download init container).

Why one module: the chart validates the same three forms at template time (helm/saguaro
templates/_helpers.tpl, ``saguaro.modelSource``) and the init container runs this code, so the
grammar and its error messages live here once for Python (docs/deploy.md, "Model sources").

A download goes into DEST with ``huggingface_hub.snapshot_download(local_dir=DEST)``, which keeps
per-file metadata (commit and ETag) under ``DEST/.cache/huggingface``: run again into the same
folder (a restarted init container on the same emptyDir), it fetches no file it already has.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from saguaro.errors import ConfigError

log = logging.getLogger("saguaro.fetch_model")

FORMS = "hf://ORG/NAME[@REVISION], pvc://CLAIM[/PATH] or an absolute path (a model baked into the image)"
DEFAULT_REVISION = "main"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ModelSourceError(ConfigError):
    """A model source URI that does not parse, or a download the hub refused."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository at a revision (branch, tag or commit)."""

    repo_id: str
    revision: str

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class ClaimSource:
    """A folder on an existing PersistentVolumeClaim ("" = the claim's root)."""

    claim: str
    path: str


@dataclass(frozen=True)
class LocalSource:
    """A folder already in the container's filesystem (baked into the image, or on a shared volume)."""

    path: str


ModelSource = HubSource | ClaimSource | LocalSource


def _bad(uri: str, why: str) -> ModelSourceError:
    return ModelSourceError(f"model source {uri!r}: {why}; expected {FORMS}")


def _parse_hub(uri: str) -> HubSource:
    rest = uri[len("hf://"):]
    name, _, revision = rest.partition("@")
    parts = name.split("/")
    if len(parts) != 2 or not all(_HUB_NAME.match(part) for part in parts):
        raise _bad(uri, "the repository must be ORG/NAME (letters, digits, '.', '_' and '-')")
    if "@" in rest and not revision:
        raise _bad(uri, "an empty revision after '@' (leave out '@' for main)")
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise _bad(uri, f"the revision {revision!r} is not a branch, tag or commit name")
    return HubSource(repo_id=name, revision=revision or DEFAULT_REVISION)


def _parse_claim(uri: str) -> ClaimSource:
    claim, _, path = uri[len("pvc://"):].partition("/")
    if not _CLAIM.match(claim) or len(claim) > 253:
        raise _bad(uri, f"{claim!r} is not a PersistentVolumeClaim name (lower-case letters, digits and '-')")
    parts = PurePosixPath(path).parts if path else ()
    if ".." in parts:
        raise _bad(uri, "the path inside the claim may not contain '..'")
    return ClaimSource(claim=claim, path="/".join(parts))


def parse_model_source(uri: str) -> ModelSource:
    """The typed source of ``uri``; a ``ModelSourceError`` naming the accepted forms otherwise."""
    if not isinstance(uri, str) or not uri.strip():
        raise ModelSourceError(f"empty model source; expected {FORMS}")
    if uri.startswith("hf://"):
        return _parse_hub(uri)
    if uri.startswith("pvc://"):
        return _parse_claim(uri)
    if "://" in uri:
        raise _bad(uri, f"unknown scheme {uri.split('://', 1)[0]!r}")
    if not uri.startswith("/"):
        raise _bad(uri, "a path must be absolute")
    return LocalSource(path=uri)


class LogLineProgress(tqdm):
    """Progress as log lines (a container log has no terminal to redraw a bar in): one line when a
    bar starts, then at most one per ``mininterval`` seconds, and one when it ends."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; tqdm rejects it
        kwargs["file"] = io.StringIO()  # tqdm writes its newlines here; display() logs instead
        kwargs.setdefault("mininterval", 15.0)
        kwargs["disable"] = False
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        log.info("%s", msg or str(self))
        return True


def _hub_refusal(source: HubSource, exc: Exception) -> ModelSourceError | None:
    """A readable error for the hub's 401/403/404 answers (None for other failures)."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    hint = ("if it is gated or private, accept its licence on the hub and put a read token in the Secret named by "
            "the chart's models.huggingFace.token.secretName (the container sees it as HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ModelSourceError(f"{source}: the revision {source.revision!r} does not exist in {source.repo_id}")
    if isinstance(exc, GatedRepoError):
        return ModelSourceError(f"{source}: the repository is gated (HTTP {exc.response.status_code}); {hint}")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelSourceError(f"{source}: repository not found or not readable with this token "
                                f"(HTTP {exc.response.status_code}); check the name, and {hint}")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403, 404):
        return ModelSourceError(f"{source}: the hub answered HTTP {exc.response.status_code}; {hint}")
    return None


def fetch_model(uri: str, dest: str | Path) -> Path:
    """Download the hf:// source ``uri`` into ``dest`` (reusing files already there) and return it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    source = parse_model_source(uri)
    if not isinstance(source, HubSource):
        raise ModelSourceError(f"fetch-model downloads hf:// sources; {uri!r} needs no download "
                               "(the chart mounts a pvc:// claim, and an absolute path is read in place)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s into %s", source, dest)
    try:
        snapshot_download(source.repo_id, revision=source.revision, local_dir=str(dest),
                          tqdm_class=LogLineProgress)
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        refusal = _hub_refusal(source, exc) or _hub_refusal(source, exc.__cause__ or exc)
        if refusal is not None:
            raise refusal from exc
        raise ModelSourceError(f"{source}: download failed: {exc}") from exc
    log.info("%s is in %s", source, dest)
    return dest
