"""The one place the Hub client is built, and the mapping of its errors to one-line HubErrors.

Errors are classified by their type and HTTP status code (huggingface_hub's typed errors,
hf-xet's and the transport's exception types), never by the text of their message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import HubError, Setting, Text, add_secret, one_line, redact

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

NO_TOKEN = Text("no Hugging Face token: pass ", Setting("token"), ", set HF_TOKEN, or run `hf auth login` "
                "(a token with write access)")


def make_api(*, endpoint: str | None = None, token: str | None = None) -> HfApi:
    """The one HfApi used for a push. Token: the argument, else HF_TOKEN, else the stored login."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token() or None
    add_secret(token)  # never printed, logged or written: errors.redact removes it from any text
    return HfApi(endpoint=endpoint or None, token=token)



@contextmanager
def hub_errors(*, api: HfApi, repo_id: str, action: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / transport errors into one-line HubErrors that say what to do next."""
    try:
        yield
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - everything the client can raise is mapped below
        msg = describe_error(e, api=api, repo_id=repo_id, action=action, revision=revision)
        if msg is None:
            raise
        raise HubError(msg) from e


def describe_error(e: BaseException, *, api: HfApi, repo_id: str, action: str,
                   revision: str | None = None) -> str | Text | None:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = api.endpoint
    if isinstance(e, LocalTokenNotFoundError):
        return NO_TOKEN
    if isinstance(e, RevisionNotFoundError):
        return Text(f"cannot {action}: revision {revision or 'main'!r} not found in {repo_id} (check ",
                    Setting("revision"), ")")
    if isinstance(e, RepositoryNotFoundError):
        return Text(f"cannot {action}: {repo_id} not found on {endpoint}, or not visible with this token "
                    "(check ", Setting("repo_id"), " and the token's access)")
    if isinstance(e, HfHubHTTPError):
        return _describe_http(e, repo_id=repo_id, action=action, revision=revision)
    if isinstance(e, RuntimeError) and e.__cause__ is not None:
        # The client wraps a failed upload ("Error while uploading 'PATH' ...") around the real error.
        # It names the file only in that text, so the name is taken from there (for display only).
        inner = describe_error(e.__cause__, api=api, repo_id=repo_id, action=action, revision=revision)
        m = re.search(r"'([^']+)'", str(e))
        return Text(m.group(1) + ": " if m else "", inner or _one_line(str(e.__cause__)))
    return _describe_transfer(e, endpoint=endpoint, repo_id=repo_id, action=action)


def _describe_http(e: HfHubHTTPError, *, repo_id: str, action: str, revision: str | None) -> str | Text:
    """An HTTP error from the Hub, by status: token, access, a moved branch, a Hub failure."""
    status = e.response.status_code if e.response is not None else None
    header = e.response.headers.get("X-Error-Message", "") if e.response is not None else ""
    server = _one_line(e.server_message or header or "")
    said = f"{status}{': ' + server if server else ''}"
    if status == 401:
        return Text(f"the Hub rejected the token ({said}): pass a valid ", Setting("token"), ", set HF_TOKEN, "
                    "or run `hf auth login`")
    if status == 403:
        return (f"not allowed to {action} {repo_id} ({said}): use a token with write access to "
                f"{repo_id.split('/')[0]}")
    if status == 412 or (status == 409 and action == "push"):
        return (f"{repo_id}@{revision or 'main'} changed on the Hub while pushing ({said}); run the "
                "push again to plan against the new state")
    if status is not None and (status >= 500 or status in (408, 429)):
        return (f"the Hub failed to {action} ({said}); run the same push again: files already "
                "uploaded are not sent again")
    return f"cannot {action} on {repo_id} ({said})"


def _describe_transfer(e: BaseException, *, endpoint: str, repo_id: str, action: str) -> str | Text | None:
    """A network, Xet or client-side error; None for anything else."""
    try:
        import httpx2

        transport: tuple[type[BaseException], ...] = (httpx2.TransportError,)
    except ImportError:  # pragma: no cover - the client's HTTP library
        transport = ()
    if isinstance(e, transport):
        return Text(f"cannot reach {endpoint} ({_one_line(str(e)) or type(e).__name__}): check ",
                    Setting("endpoint"), " and the network, then run the push again")
    if isinstance(e, ConnectionError):  # what hf-xet raises when its CAS refuses or fails a transfer
        return (f"the Xet upload failed ({_one_line(str(e))}); check the token's write access, then run "
                "the push again: chunks already uploaded are not sent again")
    if isinstance(e, ValueError):
        return f"cannot {action} on {repo_id}: {_one_line(str(e))}"
    if type(e).__module__.split(".")[0] == "hf_xet":
        return f"the Xet upload failed ({_one_line(str(e))}); run the push again to resume"
    return None


def _one_line(s: str) -> str:
    """Text the server sent, as part of a message: tokens redacted, one line, at most 300 characters."""
    lines = [x.strip() for x in redact(s).strip().splitlines() if x.strip()]
    text = " ".join(lines[:2]) if lines else ""
    return one_line(text[:300])




def whoami(api: HfApi, repo_id: str) -> str | None:
    """The token's user name, or None when there is no token at all."""
    from huggingface_hub import get_token

    if not (api.token or get_token()):
        return None
    with hub_errors(api=api, repo_id=repo_id, action="check the token"):
        return api.whoami().get("name")


def namespaces(api: HfApi, repo_id: str) -> set[str]:
    """The user's name and organisations: where the token may push without a pull request."""
    from huggingface_hub import get_token

    if not (api.token or get_token()):
        return set()
    with hub_errors(api=api, repo_id=repo_id, action="check the token"):
        me = api.whoami()
    return {me.get("name", "")} | {o.get("name", "") for o in me.get("orgs") or [] if isinstance(o, dict)}
