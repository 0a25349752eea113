"""Fetch a model from the Hugging Face Hub: `org/name[@revision]` → a local checkpoint folder.

Only what a conversion reads is downloaded: the config, the safetensors weights (and their
index) and the tokenizer files; pickled `.bin` weights never are. `huggingface_hub` does the
fetching and the caching, so its settings apply as everywhere else: HF_HOME (where the cache
lives), HF_TOKEN (gated and private models) and HF_HUB_OFFLINE (read the cache, never the network).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tokenmill.errors import TokenmillError

HUB_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "generation_config.json", "tokenizer.model", "chat_template.jinja",
]
PICKLED = (".bin", ".pt", ".pth", ".ckpt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_hub_id(source: str) -> bool:
    """`org/name` or `org/name@revision`, and no local path of that name."""
    return not Path(source).exists() and HUB_ID.match(source) is not None


def checkpoint_folder(source: str) -> Path:
    """A local folder as is; a Hub id fetched (or found in the cache) first."""
    if Path(source).is_dir():
        return Path(source)
    if not is_hub_id(source):
        raise TokenmillError(f"{source} is neither a folder nor a Hugging Face Hub id (org/name or org/name@revision)")
    return fetch(source)


def fetch(hub_id: str) -> Path:
    """The snapshot folder of `org/name[@revision]` in the Hugging Face cache, downloaded if need be."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = hub_id.partition("@")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_FILES))
    except GatedRepoError:
        raise TokenmillError(
            f"{repo_id} is a gated model: accept its conditions on its Hub page, then set HF_TOKEN to a token of "
            "that account (or log in with `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise TokenmillError(
            f"no model {repo_id} on the Hugging Face Hub (nor a local folder of that name); "
            "if it is private, set HF_TOKEN to a token that can read it"
        ) from None
    except RevisionNotFoundError:
        raise TokenmillError(f"{repo_id} has no revision '{revision}' (a branch, tag or commit)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise TokenmillError(
            f"{hub_id} is not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE is set or "
            "there is no network): fetch it once where the Hub is reachable (the cache is under HF_HOME), "
            "or give a local folder"
        ) from None
    except HfHubHTTPError as e:
        raise TokenmillError(f"the Hugging Face Hub refused {hub_id}: {e}") from None
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(name for name in _repo_files(repo_id, revision, folder) if name.endswith(PICKLED))
        if pickled:
            raise TokenmillError(
                f"{hub_id} has only pickled weights ({', '.join(pickled[:3])}), which tokenmill does not read: "
                "use a revision with safetensors (the Hub's 'convert to safetensors' pull requests) or convert it "
                "where you trust the pickle"
            )
        raise TokenmillError(f"{hub_id} has no safetensors weights")
    return folder


def _repo_files(repo_id: str, revision: str, folder: Path) -> set[str]:
    """What the repository holds, as far as is known without downloading: the snapshot folder (an
    earlier full download) and the tree listing the Hub client cached."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    names = {p.name for p in folder.iterdir()}
    try:
        names |= {f.path for f in get_cached_repo_tree(repo_id, revision=revision or None)}
    except CachedRepoTreeNotFoundError:
        pass
    return names


def push(folder: Path, repo_id: str, *, endpoint: str | None = None) -> str:
    """Upload the files of `folder` as one commit to the model repository `repo_id` on the Hub
    (created, private, when it does not exist); the commit's URL. HF_TOKEN (or `hf auth login`) must
    name an account that can write there; HF_HUB_OFFLINE=1 forbids it. `endpoint` is the Hub's
    address (default HF_ENDPOINT's)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", repo_id):
        raise TokenmillError(f"--push {repo_id}: expected a Hub repository id, org/name")
    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        raise TokenmillError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set, so the Hub is not reached "
                             f"(the folder {folder} is written; push it later with --push from a connected machine)")
    token = get_token()
    if not token:
        raise TokenmillError(f"cannot push to {repo_id}: no Hugging Face token; set HF_TOKEN to a token with write "
                             "access (or log in with `hf auth login`)")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=True, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"Upload {folder.name} from tokenmill")
    except OfflineModeIsEnabled:
        raise TokenmillError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as e:
        raise TokenmillError(f"the Hugging Face Hub refused the upload to {repo_id}: {e}") from None
    except OSError as e:  # no network, DNS, refused connection
        raise TokenmillError(f"cannot reach the Hugging Face Hub to push {repo_id}: {e}") from None
    return commit.commit_url
