"""Publishing an exported folder to the Hugging Face Hub: with bounded timeouts, the card's usage
snippet pointed at the repo, and the same command safe to run again after a failure."""

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

# seconds a Hub request may wait for the server (connect, each read and write) before the push
# fails; huggingface_hub's own client waits forever by default
DEFAULT_TIMEOUT = 60.0
USAGE_SOURCE = re.compile(r'(foreign_class\(source=")[^"]*(")')


class PublishError(RuntimeError):
    """Pushing to the Hub failed; the message says why and where the folder is."""


def _transport_error():
    """The base class of the HTTP client's network errors (huggingface_hub 2.x uses httpx2)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.HTTPError


def set_timeouts(timeout):
    """Every request huggingface_hub makes from now on gives up after ``timeout`` seconds
    without an answer (its shared client, and the metadata/download timeouts of its
    constants), so a server that accepts the connection and never answers fails the push
    instead of hanging it. Retries on time-outs are huggingface_hub's own (a few, backed off)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    try:
        import httpx2 as httpx
    except ImportError:
        import httpx

    def client():
        return httpx.Client(
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=timeout,
        )

    _http.set_client_factory(client)
    constants.HF_HUB_ETAG_TIMEOUT = constants.HF_HUB_DOWNLOAD_TIMEOUT = timeout


def hub_card(folder, repo_id):
    """The folder's ``README.md`` with its usage snippet's ``source=`` set to ``repo_id`` (a
    folder exported for a local path tells Hub users to load that path otherwise)."""
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    return USAGE_SOURCE.sub(lambda m: f"{m.group(1)}{repo_id}{m.group(2)}", text)


def push_folder(
    folder,
    repo_id,
    private=False,
    revision=None,
    token=None,
    endpoint=None,
    timeout=DEFAULT_TIMEOUT,
):
    """Uploads an exported folder to the Hub repo ``repo_id`` (created if needed, and the
    ``revision`` branch); the card's usage snippet names ``repo_id``. Returns the commit URL.
    Safe to run again: a retry after any failure uploads the same files. The folder itself is
    never changed. The token comes from ``token``, ``HF_TOKEN`` or the saved login and is never
    logged; any failure (including no answer within ``timeout`` seconds) raises
    :class:`PublishError`."""
    folder = Path(folder)
    if not (folder / "hyperparams.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} is not an exported model folder (no hyperparams.yaml): pass the --out "
            "folder of pretrained_interfaces/export.py."
        )
    set_timeouts(timeout)
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    token = token or get_token()
    if not token:
        raise PublishError(
            f"No Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again. "
            f"The exported model is in {folder}."
        )
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{api.endpoint}/{repo_id}"
    operations = [
        CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "README.md"
    ]
    if (folder / "README.md").is_file():
        card = hub_card(folder, repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=revision,
            commit_message=f"Upload {folder.name} (pretrained_interfaces/export.py)",
        )
    except (_transport_error(), HfHubHTTPError, HFValidationError, OSError) as err:
        message = str(err).replace(token, "***")
        raise PublishError(
            f"Could not push {folder} to {where}: {type(err).__name__}: {message}. "
            "Check the network, the token's write access and the repo id, then run "
            f"`python pretrained_interfaces/export.py --push-only {folder} --repo {repo_id}`; "
            f"the exported model is intact in {folder}."
        ) from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("Pushed %s to %s (%s)", folder, where, url)
    return url
